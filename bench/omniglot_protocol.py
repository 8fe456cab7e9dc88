"""The Federated Reconnaissance protocol on Omniglot, every method in the same harness.

    .venv/bin/python bench/omniglot_protocol.py [--out runs/bench-omniglot] [--no-doc]

Runs scenarios/omniglot-fedrecon.yaml (5 clients, 600 evaluation characters, 15
training and 5 test drawings, 10 new characters per client per round) with `fedrecon
run` once per method, and a variant where half the characters come back one round
later with 5 new drawings (10 + 5 training drawings: the revisits the paper's merge
mis-weights). Prints accuracy after 50/100/200/400/600 classes and writes the
"omniglot" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402

SCENARIO = "scenarios/omniglot-fedrecon.yaml"
CHECKPOINTS = (50, 100, 200, 400, 600)
METHODS = {
    "exact (conv4)": [],
    "fedrecon": ["merge.prototypes=fedrecon"],
    "fedproto": ["merge.prototypes=fedproto"],
    "local (no merge)": ["merge.prototypes=local"],
    "exact (raw pixels)": ["model.backbone=pixels", "model.checkpoint=null"],
}
REVISITS = ["tasks.train_shots=10", "tasks.revisits={fraction: 0.5, shots: 5, after: 1}"]
REVISIT_METHODS = ("exact (conv4)", "fedrecon", "fedproto")


def run(name: str, overrides: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "server.cli", "run", SCENARIO, "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    at = {}
    for r in rows:  # accuracy of the last round at or below each checkpoint
        for c in CHECKPOINTS:
            if r["accuracy"] is not None and r["classes_seen"] <= c:
                at[c] = r["accuracy"]
    print(f"{name}: final {summary['final_accuracy']:.4f} in {time.time() - start:.0f} s", flush=True)
    return {"at": at, "summary": summary}


def table(results: dict[str, dict], title: str) -> str:
    head = "| method | " + " | ".join(f"{c} classes" for c in CHECKPOINTS) + " | avg inc acc | bytes up / class |"
    lines = [f"**{title}**", "", head, "|---" * (len(CHECKPOINTS) + 3) + "|"]
    for name, r in results.items():
        cells = [f"{r['at'][c]:.3f}" if c in r["at"] else "-" for c in CHECKPOINTS]
        s = r["summary"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['average_incremental_accuracy']:.3f} | "
                     f"{s['bytes_up_per_class']:.0f} B |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-omniglot")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    out = Path(args.out)
    plain = {name: run(name, o, out / f"plain-{i}") for i, (name, o) in enumerate(METHODS.items())}
    revisit = {name: run(name + " +revisits", METHODS[name] + REVISITS, out / f"revisits-{i}")
               for i, name in enumerate(REVISIT_METHODS)}
    text = "\n\n".join([
        "## Omniglot: the Federated Reconnaissance protocol",
        "Command: `.venv/bin/python bench/omniglot_protocol.py` (each method is one `fedrecon run "
        f"{SCENARIO} --set ...`; run folders under `{args.out}`). Accuracy on the test drawings of all "
        "classes seen, after each number of classes; `local`: mean over clients of each client's own head.",
        table(plain, "Disjoint classes (the paper's protocol)"),
        table(revisit, "With revisits: 10 training drawings, then half the classes come back one round later with 5 new drawings"),
        "With disjoint classes every class comes from one client in one piece, so `fedrecon` and `fedproto` "
        "equal `exact`; revisits are where their weighting departs from the pooled mean. "
        "Per-client accuracy and forgetting heat maps: `fedrecon report RUN_DIR...` on the run folders.",
    ])
    print("\n" + text)
    if not args.no_doc:
        print(f"\nwrote {write_section('omniglot', text)}")


if __name__ == "__main__":
    main()
