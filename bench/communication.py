"""Communication of every method: bytes up and down per learned class and per round.

    .venv/bin/python bench/communication.py [--no-doc]

Reads the run folders that bench/omniglot_protocol.py and bench/text_baselines.py
wrote (run those first); bytes are Flower's serialized message contents, as each run's
metrics.jsonl counts them. Writes the "communication" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from server.compare import load_run  # noqa: E402

# (label, run folders): the disjoint Omniglot protocol, and the text baselines' ncm runs
SOURCES = [
    ("omniglot-fedrecon (conv4)", "runs/bench-omniglot/plain", ("exact", "centralized", "local", "fedavg_finetune")),
    ("clinc150-domains (MiniLM)", "runs/bench-text-baselines/clinc150-domains",
     ("exact-ncm", "exact-lda", "centralized-ncm", "local-ncm", "fedavg_finetune")),
    ("hwu64-dirichlet (MiniLM)", "runs/bench-text-baselines/hwu64-dirichlet",
     ("exact-ncm", "exact-lda", "centralized-ncm", "local-ncm", "fedavg_finetune")),
]


def size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    lines = ["| scenario | method | up / class | down / class | up / round | down / round | up+down vs fedavg_finetune |",
             "|---|---|---|---|---|---|---|"]
    for label, folder, names in SOURCES:
        runs = {n: load_run(REPO / folder / n).summary for n in names if (REPO / folder / n / "summary.json").is_file()}
        if not runs:
            raise SystemExit(f"no runs in {folder}: run the benchmark that writes it first")
        fedavg = runs.get("fedavg_finetune")
        for name, s in runs.items():
            total = s["bytes_up"] + s["bytes_down"]
            ratio = "-"
            if fedavg and name != "fedavg_finetune":
                ratio = f"{(fedavg['bytes_up'] + fedavg['bytes_down']) / total:,.0f}x less"
            lines.append(f"| {label} | {name} | {size(s['bytes_up'] / s['classes_learned'])} | "
                         f"{size(s['bytes_down'] / s['classes_learned'])} | {size(s['bytes_up'] / s['rounds'])} | "
                         f"{size(s['bytes_down'] / s['rounds'])} | {ratio} |")
    text = "\n\n".join([
        "## Communication",
        "Command: `.venv/bin/python bench/communication.py`, over the run folders of `bench/omniglot_protocol.py` "
        "and `bench/text_baselines.py` (same runs as their tables). Bytes: Flower's serialized message "
        "contents, summed over the run, divided by the classes learned or by the plan's rounds. Down includes "
        "the backbone sent once to each client (conv4: 459 kB; MiniLM comes from a wheel, only its digest "
        "travels). fedavg_finetune sends the whole model down and up with every task (conv4 448 kB; MiniLM "
        "90 MB). lda adds a shared 384 x 384 second moment to each reply.",
        "\n".join(lines),
    ])
    print(text)
    if not args.no_doc:
        print(f"\nwrote {write_section('communication', text)}")


if __name__ == "__main__":
    main()
