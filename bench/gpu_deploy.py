"""GPU clients through Flower's deployment engine: N SuperNodes sharing one GPU, training
LoRA adapters on EfficientNet-Lite0 over Omniglot, against the same deployment on CPU.

Every SuperNode is pinned to GPU 0 (``CUDA_VISIBLE_DEVICES=0``, `LocalDeployment(gpus=...)`)
and the scenario says ``model.device: auto``, so each message's ClientApp process finds the
GPU and trains its adapter under bf16 autocast. Per device: the run's wall time, the first
round and the median later round, the median handler time a task, and the share of tasks
that ran on CUDA (from the run folder's ``messages.jsonl``). Writes the "gpu-deployment"
section of docs/benchmarks.md:

    .venv/bin/python bench/gpu_deploy.py [--devices cuda cpu] [--nodes 4] [--rounds 3] [--no-doc]

On a GPU machine without flwr (the workplace's device machine), carry flwr's wheels and
their dependencies with the checkout and install them into a virtual environment there
first; the deployment needs no Ray.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from server.deploy import LocalDeployment  # noqa: E402


def scenario(nodes: int, rounds: int, classes: int, data_root: str) -> dict:
    """Omniglot, ``classes`` characters a client a round, adapters every task (the Omniglot
    adapter settings of bench/adapters.py)."""
    return {"name": "gpu-deploy", "seed": 1,
            "data": {"dataset": "omniglot", "root": data_root, "subset": "evaluation", "image_size": 84},
            "model": {"backbone": "efficientnet-lite0", "device": "auto"},
            "clients": {"count": nodes},
            "tasks": {"num_classes": nodes * rounds * classes, "classes_per_task": classes, "train_shots": 15,
                      "test_shots": 5},
            "merge": {"prototypes": "exact", "adapters": "ffa", "head": "ncm"},
            "adapters": {"schedule": "every_task", "rank": 4, "lr": 2e-4, "lr_later": 2e-5, "epochs": 2,
                         "batch_size": 32, "loss": "prototypical", "drift_sigma": 3.0},
            "faults": {"reply_timeout": 900}}


def run(device: str, nodes: int, rounds: int, classes: int, data_root: str, work: Path) -> dict:
    raw = scenario(nodes, rounds, classes, data_root)
    raw["model"]["device"] = "auto" if device == "cuda" else "cpu"
    path = work / f"{device}.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = work / f"run-{device}"
    gpus = ("0",) if device == "cuda" else ()
    with LocalDeployment(work / f"deploy-{device}", nodes, gpus=gpus) as d:
        began = time.monotonic()
        status = d.wait(d.submit({"scenario": str(path), "out": str(out)}), 3600)
        wall = time.monotonic() - began
        if status != "finished:completed":
            raise SystemExit(f"{device}: run ended {status}: {d.log(0)}")
    summary = json.loads((out / "summary.json").read_text())
    seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    tasks = [m for m in map(json.loads, (out / "messages.jsonl").read_text().splitlines())
             if m.get("phase") == "tasks" and not m["error"]]
    return {"wall": wall, "first": seconds[0], "later": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
            "handler": statistics.median(m["seconds"] for m in tasks),
            "cuda": sum(m.get("cuda", 0.0) for m in tasks) / len(tasks), "accuracy": summary["final_accuracy"],
            "failures": summary["failures"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"], choices=["cuda", "cpu"])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=5, help="characters a client learns a round")
    parser.add_argument("--data-root", default=str((REPO.parent / "shared" / "data").resolve()))
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    rows = ["| device | SuperNodes | run wall s | first round s | later rounds s (median) | handler s a task (median) "
            "| tasks on CUDA | final accuracy | failures |", "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for device in args.devices:
            r = run(device, args.nodes, args.rounds, args.classes, args.data_root, Path(tmp))
            print(json.dumps({device: r}), flush=True)
            later = f"{r['later']:.2f}" if r["later"] is not None else "-"
            rows.append(f"| {device} | {args.nodes} | {r['wall']:.1f} | {r['first']:.2f} | {later} | {r['handler']:.2f} "
                        f"| {r['cuda']:.0%} | {r['accuracy']:.4f} | {r['failures']} |")
    text = f"""## GPU clients in deployment

Command: `.venv/bin/python bench/gpu_deploy.py --devices {' '.join(args.devices)} --nodes {args.nodes} --rounds {args.rounds}`
({args.nodes} SuperNodes on one machine; with `cuda` all pinned to GPU 0; EfficientNet-Lite0 with LoRA
adapters (rank 4, ffa, every task) on Omniglot, {args.classes} characters a client a round).

{chr(10).join(rows)}
"""
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('gpu-deployment', text)}")


if __name__ == "__main__":
    main()
