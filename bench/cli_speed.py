"""Wall time of `fedrecon schema` and `fedrecon validate`, and whether they import torch or Flower.

Each command runs in a fresh interpreter (as a user starts it), ``--repeat`` times; the
table gives the median wall time and the heavy packages the process imported. With
``--before REV`` the same commands run on a checkout of that revision (a temporary git
worktree), interleaved with this tree's, so that both see the same load:

    .venv/bin/python bench/cli_speed.py --before 4dc895a

Every command reads the data from ``--data-root`` (default ../shared/data beside the
repository), so a worktree anywhere finds it. Writes the "cli" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402

PIXELS = ["--set", "model.backbone=pixels", "--set", "model.checkpoint=null"]
COMMANDS = [
    ("schema", ["schema"]),
    ("validate quickstart (conv4 checkpoint)", ["validate", "scenarios/omniglot-quickstart.yaml"]),
    ("validate quickstart, raw pixels", ["validate", "scenarios/omniglot-quickstart.yaml", *PIXELS]),
    ("validate clinc150-domains (MiniLM)", ["validate", "scenarios/clinc150-domains.yaml"]),
    ("validate scenarios/*.yaml", ["validate", *sorted(str(p.relative_to(REPO)) for p in (REPO / "scenarios").glob("*.yaml"))]),
]
# Runs the CLI as `fedrecon` does, then says which heavy packages the process holds.
PROBE = ("import sys; from server.cli import main; code = main(sys.argv[1:]); "
         "print('IMPORTED', ' '.join(m for m in ('torch', 'flwr') if m in sys.modules) or '-', file=sys.stderr); "
         "sys.exit(code)")


def timed(tree: Path, args: list[str], data_root: str) -> tuple[float, str]:
    data = [] if args[0] == "schema" else ["--set", f"data.root={data_root}"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args, *data], cwd=tree, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}:\n{proc.stderr[-2000:]}")
    imported = next(line.split(" ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("IMPORTED"))
    return seconds, imported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git revision to time side by side (a temporary worktree)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data-root", default=str((REPO.parent / "shared" / "data").resolve()))
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    trees = {"now": REPO}
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            worktree = Path(tmp) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), args.before], cwd=REPO, check=True)
            trees = {args.before: worktree, **trees}
        try:
            results = {(label, name): [] for label, _ in COMMANDS for name in trees}
            for _ in range(args.repeat):
                for label, command in COMMANDS:
                    for name, tree in trees.items():  # interleaved: both trees see the same load
                        results[label, name].append(timed(tree, command, args.data_root))
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    names = list(trees)
    header = "| command | " + " | ".join(f"{n}: median s | {n}: imports" for n in names) + " |"
    lines = [header, "|---|" + "---|---|" * len(names)]
    for label, _ in COMMANDS:
        cells = []
        for name in names:
            runs = results[label, name]
            cells += [f"{statistics.median(s for s, _ in runs):.2f}", runs[-1][1]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    command = "`.venv/bin/python bench/cli_speed.py" + (f" --before {args.before}" if args.before else "") + "`"
    text = f"""## Reading scenarios: `fedrecon schema` and `validate`

Command: {command} (each command {args.repeat} times in a fresh interpreter, the trees
interleaved; median wall time; "imports": which of torch and Flower the process held at
the end). `validate` runs every check a run makes before it starts; it builds a built-in
backbone only where a check needs it (a checkpoint to read, adapter layers to find).

{table}
"""
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('cli', text)}")


if __name__ == "__main__":
    main()
