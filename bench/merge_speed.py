"""Server merge time and memory: N clients x K classes of d-dim statistics, exact policy.

Run: .venv/bin/python bench/merge_speed.py [--clients 1000] [--classes 1000] [--dim 64]
Each client sends statistics of K classes drawn from a pool of 2K (so classes overlap
across clients); the server folds all replies of one round into the global statistics.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedrecon.learning.prototype_merges import make_policy  # noqa: E402
from fedrecon.learning.stats import ClassStats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    updates = []
    for _ in range(args.clients):
        ids = np.sort(rng.choice(2 * args.classes, args.classes, replace=False)).astype(np.int64)
        updates.append(ClassStats(ids, rng.integers(1, 20, args.classes).astype(np.float64), rng.normal(size=(args.classes, args.dim))))
    policy = make_policy("exact")
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        merged = policy.merge(ClassStats.empty(args.dim), updates)
        times.append(time.perf_counter() - start)
    rows = args.clients * args.classes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"merge of {args.clients} clients x {args.classes} classes x {args.dim}-d ({rows:,} class rows) "
          f"into {len(merged)} classes")
    print(f"best of {args.repeat}: {min(times):.3f} s ({rows / min(times) / 1e6:.2f} M class rows/s); peak RSS {peak:.0f} MiB")
    if not args.no_doc:
        from bench.docs import write_section

        text = ("## Server merge time\n\nCommand: `.venv/bin/python bench/merge_speed.py` (exact policy, one call "
                "folding every reply of a round into the global statistics; each client sends its classes drawn from "
                "a pool of twice as many, so classes overlap across clients).\n\n"
                "| clients | classes per client | feature size | merged classes | seconds (best of "
                f"{args.repeat}) | peak memory MiB |\n|---|---|---|---|---|---|\n"
                f"| {args.clients} | {args.classes} | {args.dim} | {len(merged)} | {min(times):.3f} | {peak:.0f} |")
        print(f"wrote {write_section('merge', text)}")


if __name__ == "__main__":
    main()
