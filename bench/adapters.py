"""Adapter benchmark: frozen backbone vs each adapter merge policy x schedule, one table.

The federation runs in-process, without Flower (a GPU machine need not have it),
through the same core functions the ClientApp and the strategy call:
``fedrecon.adapters.client_task`` on each client, ``AdapterServer`` and the exact
statistics merge on the server. Each row: final accuracy, average incremental accuracy
(mean over rounds of the accuracy on the classes seen so far), array bytes per round
(adapter factors down and up, drift sums up; class statistics up, apart: the ridge
head's Gram dominates them) and wall time.

    python bench/adapters.py --device cuda                 # the full table (GPU)
    python bench/adapters.py --quick --device cpu          # CLINC150 subset, 2 CPU cores

``--quick`` shrinks CLINC150 to 20 training and 10 test sentences an intent and
evaluates only every other round (always the last); the table says so in its header.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing fedrecon
    sys.path.insert(0, str(ROOT))

from fedrecon.adapters import Adapted, AdapterServer, adapter_settings, client_task, embed_adapted  # noqa: E402
from fedrecon.backbones import load_checkpoint, pick_device  # noqa: E402
from fedrecon.data import load_dataset  # noqa: E402
from fedrecon.evaluate import count_correct, head_settings  # noqa: E402
from fedrecon.plan import make_plan  # noqa: E402
from fedrecon.scenario import load_scenario  # noqa: E402
from fedrecon.stats import ClassStats, add_stats  # noqa: E402

DATA_KEYS = ("path", "test_path", "text_column", "label_column", "group_column")

# (label, overrides) of each row; the adapter rows share the scenario's adapters section
ROWS = [
    ("frozen ncm", ["merge.head=ncm"]),
    ("frozen ridge", ["merge.head=ridge"]),
    *[(f"{policy} {schedule}", [f"merge.adapters={policy}", f"adapters.schedule={schedule}"])
      for schedule in ("first_task", "every_task") for policy in ("none", "fedavg", "ffa", "stack")],
    ("stack every_task ncm keep", ["merge.adapters=stack", "adapters.schedule=every_task", "merge.head=ncm"]),
    ("stack every_task ncm compensate", ["merge.adapters=stack", "adapters.schedule=every_task", "merge.head=ncm",
                                         "adapters.staleness=compensate"]),
]

# Settings of each benchmarked scenario: its file, adapter settings, and what --quick changes.
SCENARIOS = {
    "clinc150": ("scenarios/clinc150-domains.yaml",
                 ["merge.head=ridge", "adapters.rank=8", "adapters.lr=2e-3", "adapters.lr_later=2e-4", "adapters.epochs=3",
                  "adapters.alpha=16", "adapters.drift_sigma=0.3"],
                 ["tasks.train_shots=20", "tasks.test_shots=10", "adapters.epochs=2"]),
    "omniglot": ("scenarios/omniglot-alphabets.yaml",
                 ["merge.head=ncm", "adapters.rank=4", "adapters.lr=2e-4", "adapters.lr_later=2e-5", "adapters.epochs=2",
                  "adapters.batch_size=32", "adapters.loss=prototypical", "adapters.drift_sigma=3.0"],
                 []),
}


def prepare(path: str, overrides: list[str]):
    scenario = load_scenario(ROOT / path, overrides)
    d = scenario.data
    options = {k: getattr(d, k) for k in DATA_KEYS if getattr(d, k) is not None}
    dataset = load_dataset(d.dataset, d.root, d.subset, d.image_size, **options)
    train, test = dataset.split_indices()
    plan = make_plan(scenario, train, dataset.groups, test)
    return scenario, dataset, plan


def run(path: str, overrides: list[str], device: torch.device, every: int) -> dict:
    """One federation; returns the row's metrics."""
    scenario, dataset, plan = prepare(path, overrides)
    settings = adapter_settings(scenario)
    head = head_settings(scenario)
    spec = head.spec()
    model = load_checkpoint(scenario.model.backbone, scenario.model.checkpoint).to(device)
    adapted = Adapted(model, scenario.model.backbone, settings) if settings.active else None
    server = AdapterServer(adapted.shapes(), settings) if adapted else None
    stats = None
    tasks_done: dict[int, int] = {}
    local: dict[int, dict] = {}
    accuracies, traffic, losses = [], [], []
    start = time.perf_counter()
    for r in range(1, plan.rounds + 1):
        arrivals = plan.arrivals_at(r)
        updates, factors, weights, drifts, bytes_round, stats_bytes = [], [], [], [], 0, 0
        prototypes = stats.means() if stats is not None and len(stats) else None
        for a in arrivals:
            inputs = dataset.inputs[a.sample_index]
            if adapted is None:
                feats = embed_adapted(model, inputs, device)
                result_stats = ClassStats.from_features(a.sample_labels, feats, spec)
            else:
                begin = server.start_for(a.client, r, local.get(a.client))
                if settings.merge != "none":
                    bytes_round += sum(v.nbytes for v in server.payload().values())
                res = client_task(adapted, begin, inputs, a.sample_labels, tasks_done.get(a.client, 0), device, spec,
                                  prototypes if settings.staleness == "compensate" else None)
                result_stats = res.stats
                if res.local:
                    local[a.client] = res.local
                if res.factors:
                    factors.append(res.factors)
                    weights.append(float(len(a.sample_labels)))
                    bytes_round += sum(v.nbytes for v in res.factors.values())
                    losses.append(res.loss)
                if res.drift is not None:
                    drifts.append(res.drift)
                    bytes_round += res.drift[0].nbytes + res.drift[1].nbytes
            tasks_done[a.client] = tasks_done.get(a.client, 0) + 1
            updates.append(result_stats)
            stats_bytes += sum(v.nbytes for v in result_stats.to_arrays().values())
        if server is not None and server.merge(factors, weights) and stats is not None:
            stats = server.refresh(stats, drifts)
        dim = updates[0].dim if updates else (stats.dim if stats is not None else 0)
        stats = add_stats(([stats] if stats is not None else []) + updates, dim=dim)
        traffic.append((bytes_round, stats_bytes))
        if r % every == 0 or r == plan.rounds:
            accuracies.append(evaluate(model, adapted, server, local, dataset, plan, stats, head, r, device, settings))
    return {
        "final_accuracy": accuracies[-1],
        "average_incremental_accuracy": float(np.mean(accuracies)),
        "adapter_bytes_per_round": float(np.mean([t[0] for t in traffic])),
        "stats_bytes_per_round": float(np.mean([t[1] for t in traffic])),
        "seconds": time.perf_counter() - start,
        "adapter_versions": server.version if server else 0,
        "train_loss": float(np.nanmean(losses)) if losses else None,
    }


def evaluate(model, adapted, server, local, dataset, plan, stats, head, r, device, settings) -> float:
    """Accuracy on the test samples of the classes seen by round ``r``, under the global
    adapter (``none``: the mean of three clients' scores, each under its own adapter)."""
    seen = plan.classes_seen(r)
    index, labels = plan.test_set(seen)
    inputs = dataset.inputs[index]
    if adapted is None:
        return count_correct(stats, head, embed_adapted(model, inputs, device), labels) / len(labels)
    if settings.merge == "none":
        # every client scores with its own adapter; three of them (first, middle, last)
        # stand for all, to keep the cost of a row near the others'
        clients = sorted(local) or [0]
        scores = []
        for client in sorted({clients[0], clients[len(clients) // 2], clients[-1]}):
            adapted.load(server.start_for(client, r, local.get(client)))
            scores.append(count_correct(stats, head, embed_adapted(model, inputs, device, settings.amp), labels) / len(labels))
        return float(np.mean(scores))
    adapted.load(server.start_for(0, r + 1))
    return count_correct(stats, head, embed_adapted(model, inputs, device, settings.amp), labels) / len(labels)


def table(rows: list[dict]) -> str:
    lines = ["| scenario | run | final acc | avg incr acc | adapter bytes/round | stats bytes/round | wall s |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['scenario']} | {row['run']} | {row['final_accuracy']:.4f} | "
                     f"{row['average_incremental_accuracy']:.4f} | {row['adapter_bytes_per_round']:,.0f} | "
                     f"{row['stats_bytes_per_round']:,.0f} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="CLINC150 subset, evaluation every other round")
    parser.add_argument("--every", type=int, default=None, help="evaluate every N rounds (always the last); default 1, --quick 2")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--rows", nargs="*", default=None, help="labels of the rows to run (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="scenario override key=value (all runs)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    every = args.every or (2 if args.quick else 1)
    rows = []
    for name in args.scenarios:
        path, settings, quick = SCENARIOS[name]
        for label, change in ROWS:
            if args.rows and label not in args.rows:
                continue
            overrides = [*settings, *(quick if args.quick else []), *change, f"model.device={device}",
                         "model.embedding_cache=null", *args.overrides]
            row = {"scenario": name, "run": label, **run(path, overrides, device, every)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nAdapter benchmark on {gpu} ({torch.get_num_threads()} threads, torch {torch.__version__})"
          f"{', --quick: CLINC150 20/10 shots an intent, evaluation every 2nd round' if args.quick else ''}")
    print(table(rows))


if __name__ == "__main__":
    main()
