"""Accuracy against the privacy budget: `privacy.dp` with epsilon 1, 4, 16 and none.

CLINC150 by domain (10 rounds, MiniLM: unit-norm features, clip 1) with the ncm and lda
heads, and the Omniglot protocol (12 rounds, conv4: feature norms 9.5-12.2 for 90% of
drawings, clip 12) with ncm; delta 1e-5. Each row is one `fedrecon run`; its reported
epsilon is checked against `dp_accounting`'s for the same noise multiplier and number of
releases. Writes the "dp" section of docs/benchmarks.md:

    .venv/bin/python bench/dp_accuracy.py [--no-doc]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from bench.harness import fedrecon_run  # noqa: E402
from fedrecon.dp import epsilon_spent  # noqa: E402

EPSILONS = (1.0, 4.0, 16.0, None)
RUNS = [
    ("clinc150-domains", "scenarios/clinc150-domains.yaml", "ncm", 1.0),
    ("clinc150-domains", "scenarios/clinc150-domains.yaml", "lda", 1.0),
    ("omniglot-fedrecon", "scenarios/omniglot-fedrecon.yaml", "ncm", 12.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    lines = ["| scenario | head | epsilon (target) | clip | noise multiplier | epsilon reported | epsilon, accountant | "
             "final acc | avg incr acc |", "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, head, clip in RUNS:
            for eps in EPSILONS:
                sets = [f"merge.head={head}"] + ([f"privacy.dp={{epsilon: {eps}, clip: {clip}}}"] if eps else [])
                summary, _ = fedrecon_run(path, sets, Path(tmp) / f"{name}-{head}-{eps}")
                if eps:
                    check = epsilon_spent(summary["noise_multiplier"], summary["releases"], summary["privacy_delta"])
                    cells = [f"{eps:g}", f"{clip:g}", f"{summary['noise_multiplier']:.3f}", f"{summary['privacy_epsilon']:.4f}",
                             f"{check:.4f}"]
                else:
                    cells = ["∞ (no noise)", "-", "-", "-", "-"]
                lines.append(f"| {name} | {head} | " + " | ".join(cells) +
                             f" | {summary['final_accuracy']:.4f} | {summary['average_incremental_accuracy']:.4f} |")
                print(lines[-1], flush=True)
    text = f"""## Differential privacy: accuracy against epsilon

Command: `.venv/bin/python bench/dp_accuracy.py` (one `fedrecon run SCENARIO --set merge.head=HEAD
--set "privacy.dp={{epsilon: E, clip: C}}"` a row; delta 1e-5). Each sample's features are clipped to
L2 norm C, every released count, sum and second-moment entry gets Gaussian noise, calibrated so that the
plan's rounds spend exactly epsilon (RDP, `dp-accounting`, the rounds composed as if a person could
contribute to each; docs/privacy.md). "epsilon, accountant": `dp_accounting`'s own answer for the
run's noise multiplier and number of releases.

{chr(10).join(lines)}
"""
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('dp', text)}")


if __name__ == "__main__":
    main()
