"""Flower simulation at 100, 1,000 and 10,000 virtual clients: wall time, per-round and
per-message time beside Flower's own floor at the same number of nodes, and the peak
memory of all processes.

Run: .venv/bin/python bench/sim_scale.py [--clients 100 1000 10000]

Each size is `fedrecon run` of the quickstart scenario with one Omniglot class a task,
each class shared by several clients (`tasks.split: overlap`):
- 100 clients: 100 classes, each held by 3 clients (300 tasks);
- 1,000 clients: 600 classes, each held by 5 (3,000 tasks; the scale issue's scenario);
- 10,000 clients: 700 classes of the background set, each held by 15 (10,500 tasks; the
  evaluation set's 20 drawings a class cannot give 10,000 clients a sample each).
Tasks are tiny (a few drawings), so the time is almost all per-message cost. The machine's
weight store is emptied before each run, so the weights are found as on a first run.
Flower's floor (bench/sim_floor.py) is the same engine with a ClientApp that only replies,
1,000 messages a round (all nodes under 1,000). Peak memory is the largest sum of the
resident memory of the run and every process it started (Ray's GCS, raylet and workers),
sampled every 0.2 s from /proc.
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
sys.path.insert(0, str(REPO))

from bench.harness import forget_weights  # noqa: E402


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


SHAPES = {  # clients -> the scenario's overrides
    100: ["tasks.num_classes=100", "tasks.train_shots=10", "tasks.test_shots=5",
          "tasks.split={kind: overlap, shared: 1.0, among: 3}"],
    1000: ["tasks.num_classes=600", "tasks.train_shots=10", "tasks.test_shots=5",
           "tasks.split={kind: overlap, shared: 1.0, among: 5}"],
    10000: ["data.subset=background", "tasks.num_classes=700", "tasks.train_shots=15", "tasks.test_shots=5",
            "tasks.split={kind: overlap, shared: 1.0, among: 15}"],
}


def peak_of(cmd: list[str], **popen) -> tuple[float, float, subprocess.Popen]:
    """Run ``cmd``; (wall seconds, peak MiB of its process tree, the finished process)."""
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, **popen)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mib(proc.pid))
        time.sleep(0.2)
    return time.time() - start, peak, proc


def run(clients: int, out: Path) -> dict:
    overrides = [f"clients.count={clients}", "tasks.classes_per_task=1", "model.device=cpu", *SHAPES[clients]]
    cmd = [sys.executable, "-m", "server.cli", "run", "scenarios/omniglot-quickstart.yaml", "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    forget_weights()  # as on a machine that never ran this backbone
    wall, peak, proc = peak_of(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"run with {clients} clients failed ({proc.returncode}): {' '.join(cmd)}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    messages = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    tasks = [m for m in messages if m["phase"] == "tasks"]
    identify = max((m["exchange_s"] for m in messages if m["phase"] == "identify" and m["round"] == 1), default=0.0)
    # per task message: each later round's task exchange over its messages, the median round
    per = sorted(max(m["exchange_s"] for m in tasks if m["round"] == r) / sum(m["round"] == r for m in tasks)
                 for r in sorted({m["round"] for m in tasks}) if r > 1 and sum(m["round"] == r for m in tasks) >= 50)
    return {
        "clients": clients,
        "tasks": len(tasks),
        "rounds": len(rows),
        "wall_s": round(wall, 1),
        "first_round_s": rows[0]["seconds"],
        "identify_s": identify,
        "median_later_round_s": sorted(r["seconds"] for r in rows[1:])[len(rows[1:]) // 2],
        "ms_per_task_message": round(1000 * per[len(per) // 2], 2) if per else None,
        "handler_ms": round(1000 * sorted(m.get("seconds", 0.0) for m in tasks)[len(tasks) // 2], 2),
        "bytes_down_round1": rows[0]["bytes_down"],
        "peak_rss_mib": round(peak),
        "accuracy": round(rows[-1]["accuracy"], 4),
    }


def floor(nodes: int) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "sim_floor.py"), "--nodes", str(nodes), "--rounds", "3",
           "--per-round", str(min(nodes, 1000))]
    wall, peak, proc = peak_of(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the floor with {nodes} nodes failed ({proc.returncode})")
    result = json.loads(proc.stdout.read().strip().splitlines()[-1])
    return {**result, "peak_rss_mib": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=sorted(SHAPES), choices=sorted(SHAPES))
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            results.append({**run(n, Path(tmp) / f"run-{n}"), "floor": floor(n)})
            print(json.dumps(results[-1]), flush=True)
    lines = ["| clients | tasks | rounds | wall s | first round s (identify s) | median later round s | "
             "ms a task message (rounds 2+) | of which the ClientApp's handler | Flower's floor ms a message | "
             "peak memory MiB, all processes (floor) | final accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['clients']:,} | {r['tasks']:,} | {r['rounds']} | {r['wall_s']} | {r['first_round_s']:.1f} "
              f"({r['identify_s']:.1f}) | {r['median_later_round_s']:.2f} | {r['ms_per_task_message']} | "
              f"{r['handler_ms']} | {r['floor']['ms_per_message']} | {r['peak_rss_mib']:,} "
              f"({r['floor']['peak_rss_mib']:,}) | {r['accuracy']:.4f} |" for r in results]
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = (f"From {a['clients']:,} to {b['clients']:,} clients ({b['clients'] / a['clients']:.0f}x): wall time "
                  f"x{b['wall_s'] / a['wall_s']:.1f}, time a task message x{b['ms_per_task_message'] / a['ms_per_task_message']:.1f} "
                  f"(Flower's floor x{b['floor']['ms_per_message'] / a['floor']['ms_per_message']:.1f}: its engine scans every "
                  f"node's messages), peak memory x{b['peak_rss_mib'] / a['peak_rss_mib']:.1f}.")
    else:
        growth = ""
    text = ("## Simulation: virtual clients\n\nCommand: `.venv/bin/python bench/sim_scale.py` (`fedrecon run` of the "
            "quickstart scenario, one Omniglot class a task shared by several clients: 100 clients 100 classes held by "
            "3 each; 1,000 clients 600 classes held by 5, the scale issue's scenario; 10,000 clients 700 background "
            "classes held by 15; 2 clients at a time on 2 cores; the machine's weight store emptied first; the first "
            "round holds Ray's start-up and the identify queries; Flower's floor: `bench/sim_floor.py`, a ClientApp "
            "that only replies, at the same number of nodes; memory: the sum over the run and every process it "
            "started, sampled every 0.2 s).\n\n" + "\n".join(lines) + ("\n\n" + growth if growth else ""))
    print("\n" + text)
    if not args.no_doc:
        sys.path.insert(0, str(REPO))
        from bench.docs import write_section

        print(f"wrote {write_section('simulation', text)}")


if __name__ == "__main__":
    main()
