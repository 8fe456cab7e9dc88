"""Flower simulation cost: wall time, per-round overhead and peak memory for N virtual clients.

Run: .venv/bin/python bench/sim_scale.py [--clients 10 100] [--rounds 5]

Each client learns one Omniglot class per round from 5 drawings, so the rounds are almost
all Flower overhead (messages, Ray actors, the server's bookkeeping and evaluation). Peak
memory is the largest sum of the resident memory of `fedrecon run` and all processes it
started (Ray's GCS, raylet and workers), sampled every 0.2 s from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int) -> float:
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kib(pid)
        todo += tree.get(pid, [])
    return total / 1024


def run(clients: int, rounds: int, out: Path) -> dict:
    overrides = [
        f"clients.count={clients}", "tasks.arrival.kind=synchronous", f"tasks.num_classes={clients * rounds}",
        "tasks.classes_per_task=1", "tasks.train_shots=5", "tasks.test_shots=5", "model.device=cpu",
    ]
    cmd = [sys.executable, "-m", "server.cli", "run", "scenarios/omniglot-quickstart.yaml", "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mib(proc.pid))
        time.sleep(0.2)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"run with {clients} clients failed ({proc.returncode}): {' '.join(cmd)}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    later = sorted(r["seconds"] for r in rows[1:])
    return {
        "clients": clients,
        "rounds": len(rows),
        "wall_s": round(wall, 1),
        "first_round_s": rows[0]["seconds"],
        "median_later_round_s": later[len(later) // 2] if later else None,
        "peak_rss_mib": round(peak),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            results.append(run(n, args.rounds, Path(tmp) / f"run-{n}"))
            print(json.dumps(results[-1]), flush=True)
    lines = ["| clients | rounds | wall s | first round s | median later round s | peak memory (MiB, all processes) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['rounds']} | {r['wall_s']} | {r['first_round_s']:.2f} | "
              f"{r['median_later_round_s']:.2f} | {r['peak_rss_mib']} |" for r in results]
    text = ("## Simulation: virtual clients\n\nCommand: `.venv/bin/python bench/sim_scale.py` (`fedrecon run` of the "
            "quickstart scenario with N clients, each learning one class from 5 drawings a round, 2 clients at a time "
            "on 2 cores; the first round holds Ray's start-up and the backbone download; memory: the sum over "
            "`fedrecon run` and every process it started, sampled every 0.2 s).\n\n" + "\n".join(lines))
    print("\n" + text)
    if not args.no_doc:
        sys.path.insert(0, str(REPO))
        from bench.docs import write_section

        print(f"wrote {write_section('simulation', text)}")


if __name__ == "__main__":
    main()
