"""Where a deployed round's time goes, next to Flower's own floor measured in the same deployment.

For 3 and 8 SuperNodes on loopback (`server.deploy.LocalDeployment`: SuperExec polling every
0.1 s, the server pulling every 0.2 s, as `deploy-local` does), each deployment runs:

- Flower's floor: `bench/floor_app` (one message a node a round, replied at once), its
  ClientApp importing nothing, then importing torch;
- fedrecon on a tiny scenario (N clients, one Omniglot character each a round, 4 rounds,
  conv4): "before", with the node's disk cache and worker off (every message imports
  torch, decodes the dataset and builds the backbone); with the disk cache (prepared
  drawings memory-mapped from `$FLWR_HOME/fedrecon-cache`) but no worker, on a second run;
  with both (each SuperNode's worker, clients/worker.py, keeps the imports and the
  backbone: the message's process only decodes and encodes), the first run on new nodes
  (the early identify names the scenario, so each new node's worker imports torch and
  decodes the data into the cache the local SuperNodes share while the server prepares)
  and the next run on the same nodes.

Per round: the first round and the median of the later ones. Per message (fedrecon's
`messages.jsonl`, rounds 2 and later, medians): the process's age when the handler starts
(process start and Flower's own set-up), the import of the learning code (torch) or the time
to reach the node's worker (starting it, in a node's first task), reading
the data, building the backbone, embedding, the whole handler, and the server's wait for
the round's replies. Writes the "deployment-timeline" section of docs/benchmarks.md:

    .venv/bin/python bench/deploy_timeline.py [--nodes 3 8] [--rounds 4] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from server.deploy import LocalDeployment  # noqa: E402
from server.polling import POLL_INTERVAL  # noqa: E402

FLOOR = REPO / "bench" / "floor_app"
PARTS = ("load_s", "process_s", "import_s", "worker_s", "data_s", "backbone_s", "embed_s", "seconds", "exchange_s")


def scenario(nodes: int, rounds: int, data_root: str) -> dict:
    return {"name": "timeline", "seed": 1,
            "data": {"dataset": "omniglot", "root": data_root, "subset": "evaluation", "image_size": 28},
            "model": {"backbone": "conv4", "checkpoint": str(REPO / "checkpoints" / "conv4-omniglot.pt"), "device": "cpu"},
            "clients": {"count": nodes},
            "tasks": {"num_classes": nodes * rounds, "classes_per_task": 1, "train_shots": 5, "test_shots": 5},
            "faults": {"reply_timeout": 300}}


def rounds_of(seconds: list[float]) -> dict:
    return {"first": seconds[0], "later": statistics.median(seconds[1:])}


def floor(d: LocalDeployment, work: Path, rounds: int, torch: bool) -> dict:
    out = work / f"floor-{torch}.json"
    status = d.wait(d.submit({"rounds": rounds, "out": str(out), "torch": torch}, app=FLOOR), 900)
    if status != "finished:completed":
        raise SystemExit(f"floor app ended {status}: {d.log(0)}")
    data = json.loads(out.read_text())
    later = [m for m in data["messages"] if m["round"] > 1]
    return {**rounds_of(data["rounds"]), **{k: statistics.median(m[k] for m in later) for k in ("load_s", "process_s")}}


def ours(d: LocalDeployment, work: Path, path: Path, name: str) -> dict:
    out = work / name
    status = d.wait(d.submit({"scenario": str(path), "out": str(out), "poll_interval": POLL_INTERVAL}), 1800)
    if status != "finished:completed":
        raise SystemExit(f"fedrecon run ended {status}; logs in {work}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    messages = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    later = [m for m in messages if m["round"] > 1 and m["phase"] == "tasks" and not m["error"]]
    if not later:
        raise SystemExit(f"{name}: no task reply after round 1 (failures: {[r['failures'] for r in rows]}); "
                         f"see {out / 'messages.jsonl'} and the logs in {work}")
    parts = {k: statistics.median(m[k] for m in later) for k in PARTS if all(k in m for m in later)}
    return {**rounds_of([r["seconds"] for r in rows]), **parts}


def measure(nodes: int, rounds: int, data_root: str, work: Path) -> dict:
    path = work / f"timeline-{nodes}.yaml"
    path.write_text(yaml.safe_dump(scenario(nodes, rounds, data_root)))
    results = {}
    with LocalDeployment(work / f"off-{nodes}", nodes, node_config={"cache-dir": "none", "worker-idle-s": 0}) as d:
        results["Flower floor, nothing imported"] = floor(d, work, rounds, False)
        results["Flower floor, torch imported"] = floor(d, work, rounds, True)
        results["fedrecon, no node cache, no worker (before)"] = ours(d, work, path, f"off-run-{nodes}")
    with LocalDeployment(work / f"cache-{nodes}", nodes, node_config={"worker-idle-s": 0}) as d:
        ours(d, work, path, f"cache-fill-{nodes}")
        results["fedrecon, node cache, no worker, next run"] = ours(d, work, path, f"cache-run-{nodes}")
    with LocalDeployment(work / f"on-{nodes}", nodes) as d:
        results["fedrecon, node cache and worker, first run on new nodes"] = ours(d, work, path, f"on-run-{nodes}")
        results["fedrecon, node cache and worker, next run"] = ours(d, work, path, f"on-next-{nodes}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[3, 8])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data-root", default=str((REPO.parent / "shared" / "data").resolve()))
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    per_round = ["| SuperNodes | app | first round s | later rounds s (median) |", "|---|---|---|---|"]
    per_message = ["| SuperNodes | app | process age at load s | process age at handler s | imports s | reach worker s | data s | backbone s | embed s | handler s | "
                   "server's wait a round s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in args.nodes:
            results = measure(nodes, args.rounds, args.data_root, Path(tmp))
            print(json.dumps({nodes: results}), flush=True)
            for name, r in results.items():
                per_round.append(f"| {nodes} | {name} | {r['first']:.2f} | {r['later']:.2f} |")
                cells = [f"{r[k]:.2f}" if k in r else "-" for k in PARTS]
                per_message.append(f"| {nodes} | {name} | " + " | ".join(cells) + " |")
    text = f"""## Deployment: where a round's time goes, against Flower's floor

Command: `.venv/bin/python bench/deploy_timeline.py` (SuperLink and N SuperNodes on loopback, all on
this 2-core machine; {args.rounds} rounds; the floor is `bench/floor_app`, one message a node a round
replied at once, run in the same deployment; fedrecon: N clients, one Omniglot character each a round,
conv4). Every message starts a new `flwr-clientapp` process (Flower 1.42); "process age at handler" is
how old that process is when the handler starts. Before the node cache, the early identify and
the node memory, the code measured 19.3 s a round and 26.8 s for the first (the section
"deployment, tuned" above, `bench/deploy_overhead.py`, 3 SuperNodes, not rerun since). The goal:
later rounds at most the torch floor's + 1 s, the first round at most the floor's first + 5 s.

{chr(10).join(per_round)}

Per message (fedrecon: medians over rounds 2 and later; the floor's process age too):

{chr(10).join(per_message)}
"""
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('deployment-timeline', text)}")


if __name__ == "__main__":
    main()
