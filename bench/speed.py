"""Frozen backbones: a run's wall time over the time to embed every sample once (goal <= 1.5).

    .venv/bin/python bench/speed.py [--out runs/bench-speed] [--no-doc]

For each scenario, embed: in this process, on the CPU, with no cache and after a
warm-up batch, every sample the run touches (the training samples of the plan's
arrivals, the test samples of every class seen by the last round) goes once through
the backbone, with 1 or all torch threads, whichever is faster on a probe. Run: wall
time of `fedrecon run SCENARIO --set model.embedding_cache=null` as a subprocess, so
no features cached on disk help. Start-up: wall time of a one-round run of the same
scenario with one training and one test sample per class. Writes the
"speed" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from bench.harness import fedrecon_run  # noqa: E402
from fedrecon.backbones.embed import embed  # noqa: E402
from fedrecon.scenario import load_scenario  # noqa: E402
from server.prepare import prepare  # noqa: E402

GOAL = 1.5
# scenario file, and the overrides that make its start-up run a single round with at least
# as many tasks as clients run at once (so every worker loads data and backbone, as in the run)
SCENARIOS = {
    "omniglot-fedrecon": ("scenarios/omniglot-fedrecon.yaml", ["tasks.num_classes=50"]),
    "clinc150-domains": ("scenarios/clinc150-domains.yaml", ["tasks.split.groups=2", "tasks.arrival=synchronous"]),
}
CPU_NO_CACHE = ["model.embedding_cache=null", "model.device=cpu"]
TINY = ["tasks.train_shots=1", "tasks.test_shots=1"]
PROBE = 1024  # samples timed with each thread count
CORES = torch.get_num_threads()


def seconds(model, inputs: np.ndarray, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    embed(model, inputs)
    return time.perf_counter() - start


def time_embed(path: str) -> dict:
    """Samples the plan touches, and seconds to embed each once with the faster thread count."""
    scenario = load_scenario(REPO / path, CPU_NO_CACHE)
    prep = prepare(scenario)
    plan = prep.plan
    train = np.concatenate([a.sample_index for a in plan.arrivals])
    test, _ = plan.test_set(plan.classes_seen(plan.rounds))
    index = np.unique(np.concatenate([train, test]))
    probe = prep.dataset.inputs[index[:PROBE]]
    seconds(prep.model, probe[:64], CORES)  # warm-up: lazy initialisation, first allocations
    # With another job on the cores, 2 intra-op threads can be slower than 1 (each op
    # waits for its slower thread): time both on a probe and embed with the faster.
    threads = min({1, CORES}, key=lambda t: seconds(prep.model, probe, t))
    return {"backbone": scenario.model.backbone, "samples": len(index), "threads": threads,
            "embed_s": seconds(prep.model, prep.dataset.inputs[index], threads)}


def time_run(path: str, overrides: list[str], out: Path) -> tuple[float, list[dict]]:
    """Wall seconds of `fedrecon run` and the rows of its metrics.jsonl."""
    start = time.perf_counter()
    _, rows = fedrecon_run(path, CPU_NO_CACHE + overrides, out)
    return time.perf_counter() - start, rows


def measure(name: str, out: Path) -> dict:
    path, one_round = SCENARIOS[name]
    load = os.getloadavg()[0]
    r = {"scenario": name, **time_embed(path)}
    r["run_s"], rows = time_run(path, [], out / name)
    r["first_round_s"] = rows[0]["seconds"]
    r["later_rounds_s"] = sum(row["seconds"] for row in rows[1:])
    r["rounds"] = len(rows)
    r["startup_s"], _ = time_run(path, one_round + TINY, out / f"{name}-startup")
    r["ratio"] = r["run_s"] / r["embed_s"]
    r["ratio_no_startup"] = (r["run_s"] - r["startup_s"]) / r["embed_s"]
    r["load"] = (load, os.getloadavg()[0])  # the 2 cores are shared: say how busy they were
    return r


def verdict(ratio: float) -> str:
    return f"{ratio:.2f}, {'meets' if ratio <= GOAL else 'misses'} the goal"


def where_time_goes(r: dict) -> str:
    outside = r["run_s"] - r["first_round_s"] - r["later_rounds_s"]
    return (f"{r['scenario']}: {verdict(r['ratio'])} with start-up and {verdict(r['ratio_no_startup'])} without. "
            f"Of the run's {r['run_s']:.0f} s, {outside:.0f} s pass outside the rounds (before round 1: imports, data, "
            f"backbone, Ray start; after the last: summary, Ray's shutdown), {r['first_round_s']:.0f} s in round 1 "
            f"(Ray's worker processes start and load data and backbone, then the round's work) and "
            f"{r['later_rounds_s']:.0f} s in the "
            f"{r['rounds'] - 1} later rounds; a second of start-up more or less moves the second ratio by "
            f"{1 / r['embed_s']:.2f}. 1-minute load average {r['load'][0]:.1f} before, {r['load'][1]:.1f} after.")


def report(results: list[dict], out: str) -> str:
    lines = ["| scenario | backbone | samples embedded | threads | embed once s | run wall s | first round s "
             "| later rounds s | start-up s | wall / embed | (wall − start-up) / embed |", "|---" * 11 + "|"]
    lines += [f"| {r['scenario']} | {r['backbone']} | {r['samples']:,} | {r['threads']} | {r['embed_s']:.1f} | {r['run_s']:.1f} | "
              f"{r['first_round_s']:.1f} | {r['later_rounds_s']:.1f} ({r['rounds'] - 1}) | {r['startup_s']:.1f} | "
              f"{r['ratio']:.2f} | {r['ratio_no_startup']:.2f} |" for r in results]
    return "\n\n".join([
        "## Speed: frozen backbones, run wall time over embedding once",
        f"Command: `.venv/bin/python bench/speed.py` (run folders under `{out}`). Goal: a run's wall time at most "
        f"{GOAL} times the time to embed every sample it touches once. Embed once: in the benchmark's own process "
        "(CPU, no cache, after a 64-sample warm-up, with 1 or "
        f"{CORES} torch threads, whichever embedded a {PROBE}-sample probe faster), every training sample of the "
        "plan's arrivals and the test samples of every class seen by the last round, each once. Run wall: `fedrecon run "
        "SCENARIO --set model.embedding_cache=null --set model.device=cpu` as a subprocess (no features from disk); first "
        "round and later rounds (their number in brackets): the `seconds` of metrics.jsonl. Start-up: wall time of a "
        "one-round run of the same scenario with 1 training and 1 test sample per class and at least as many tasks as "
        "clients run at once (interpreter, imports, data and backbone loading, Ray and Flower start, one round of "
        "messages). Flower's per-round cost on its own: the Simulation and Deployment sections.",
        "\n".join(lines),
        *[where_time_goes(r) for r in results],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-speed")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    results = []
    for name in SCENARIOS:  # one after the other: the runs would share the 2 cores
        results.append(measure(name, Path(args.out).resolve()))
        print(json.dumps(results[-1]), flush=True)
    text = report(results, args.out)
    print("\n" + text)
    if not args.no_doc:
        print(f"\nwrote {write_section('speed', text)}")


if __name__ == "__main__":
    main()
