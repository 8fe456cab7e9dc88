"""Adapter benchmark: frozen backbone vs each adapter merge policy x schedule, one table.

The federation runs in-process, without Flower (a GPU machine need not have it),
through the same core functions the ClientApp and the strategy call:
``fedrecon.learning.adapter_task.client_task`` on each client, ``AdapterServer`` and the exact
statistics merge on the server. Each row: final accuracy, average incremental accuracy
(mean over rounds of the accuracy on the classes seen so far), array bytes per round
(adapter factors down and up, drift sums up; class statistics up, apart: the ridge
head's Gram dominates them) and wall time.

    python bench/adapters.py --device cuda                 # the full table (GPU)
    python bench/adapters.py --quick --device cpu          # CLINC150 subset, 2 CPU cores

A machine without the MiniLM wheel, the data or pydantic (the lent GPU machine has
torch, numpy, PyYAML, tokenizers and safetensors only) runs from a bundle made here:
every row's scenario as JSON, the datasets, MiniLM in float16, and the wheels of
pydantic and its dependencies:

    python bench/adapters.py --export .cache/adapter-bundle          # here (~60 MiB)
    python3 -m pip install --no-index --find-links .cache/adapter-bundle/wheels pydantic   # there, then
    python3 bench/adapters.py --bundle .cache/adapter-bundle --device cuda

``--quick`` shrinks CLINC150 to 20 training and 10 test sentences an intent and
evaluates only every other round (always the last); the table says so in its header.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing fedrecon
    sys.path.insert(0, str(ROOT))

from fedrecon.backbones.embed import load_backbone, pick_device  # noqa: E402
from fedrecon.backbones.registry import backbone_entry  # noqa: E402
from fedrecon.learning.adapter_task import (  # noqa: E402
    AdapterServer, adapt_step, anyone_trains, client_task, federation_negatives, known_after, trained_columns)
from fedrecon.learning.evaluate import count_correct  # noqa: E402
from fedrecon.learning.heads import head_spec  # noqa: E402
from fedrecon.learning.lora import Adapted  # noqa: E402
from fedrecon.learning.stats import ClassStats, add_stats  # noqa: E402
from fedrecon.learning.training import embed_adapted  # noqa: E402
from bench.adapter_bundle import export_bundle, from_bundle  # noqa: E402
from bench.adapter_rows import ROWS, SCENARIOS, Setup, pooled, row_scenario, setup_of  # noqa: E402


def run(setup: Setup, device: torch.device, every: int) -> dict:
    """One federation, through the core functions the ClientApp and the strategies call;
    returns the row's metrics."""
    s, dataset, plan = setup.scenario, setup.dataset, setup.plan
    a_cfg, policy = s.adapters, s.merge.adapters
    spec = head_spec(s.merge, s.seed)
    model = load_backbone(s.model.backbone, s.model.checkpoint).to(device)
    adapted = Adapted(model, backbone_entry(s.model.backbone), a_cfg) if a_cfg.active else None
    server = AdapterServer(adapted.shapes(), s) if adapted else None
    stats = None
    tasks_done: dict[int, int] = {}
    local: dict[int, dict] = {}
    accuracies, traffic, losses = [], [], []
    start = time.perf_counter()
    for r in range(1, plan.rounds + 1):
        arrivals = plan.arrivals_at(r)
        updates, factors, weights, drifts, bytes_round, stats_bytes = [], [], [], [], 0, 0
        # the federation's classes (adapters.classifier: federation): the earlier rounds'
        # statistics, then each step's trainers' class sums
        known = trained_columns(stats, a_cfg) if stats is not None and len(stats) else None
        trains = adapted is not None and anyone_trains(a_cfg, [tasks_done.get(a.client, 0) for a in arrivals], r)
        for step in range(a_cfg.steps if trains else 0):
            # adapter steps (as strategies.adapter_steps): train together, merge, repeat
            step_factors, step_weights, step_classes = [], [], []
            for a in arrivals:
                bytes_round += sum(v.nbytes for v in server.payload().values())
                negatives = None
                if a_cfg.classifier == "federation" and known is not None:
                    negatives = federation_negatives(known, a.sample_labels)
                    bytes_round += known.counts.nbytes + known.sums.nbytes
                res = adapt_step(adapted, server.start_for(a.client, r), dataset.inputs[a.sample_index],
                                 a.sample_labels, tasks_done.get(a.client, 0), device, s, r, step, negatives)
                if res.factors:
                    step_factors.append(res.factors)
                    step_weights.append(float(len(a.sample_labels)))
                    step_classes.append(res.classes)
                    bytes_round += sum(v.nbytes for v in res.factors.values())
                    losses.append(res.loss)
            if not server.merge(step_factors, step_weights):
                break  # no one trains this round: no more steps
            if a_cfg.classifier == "federation":
                known = known_after(known, step_classes)
        prototypes = stats.means() if stats is not None and len(stats) else None
        for a in arrivals:
            inputs = dataset.inputs[a.sample_index]
            if adapted is None:
                feats = embed_adapted(model, inputs, device)
                result_stats = ClassStats.from_features(a.sample_labels, feats, spec)
            else:
                begin = server.start_for(a.client, r, local.get(a.client))
                if policy != "none":
                    bytes_round += sum(v.nbytes for v in server.payload().values())
                res = client_task(adapted, begin, inputs, a.sample_labels, tasks_done.get(a.client, 0), device, s,
                                  prototypes if a_cfg.staleness == "compensate" else None)
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
            accuracies.append(evaluate(model, adapted, server, local, setup, stats, r, device))
    return {
        "final_accuracy": accuracies[-1],
        "average_incremental_accuracy": float(np.mean(accuracies)),
        "adapter_bytes_per_round": float(np.mean([t[0] for t in traffic])),
        "stats_bytes_per_round": float(np.mean([t[1] for t in traffic])),
        "seconds": time.perf_counter() - start,
        "adapter_versions": server.version if server else 0,
        "train_loss": float(np.nanmean(losses)) if losses else None,
    }


def evaluate(model, adapted, server, local, setup: Setup, stats, r, device) -> float:
    """Accuracy on the test samples of the classes seen by round ``r``, under the global
    adapter (``none``: the mean of three clients' scores, each under its own adapter)."""
    s, plan = setup.scenario, setup.plan
    index, labels = plan.test_set(plan.classes_seen(r))
    inputs = setup.dataset.inputs[index]
    amp = s.adapters.mixed_precision

    def accuracy(feats: np.ndarray) -> float:
        return count_correct(stats, s, feats, labels) / len(labels)

    if adapted is None:
        return accuracy(embed_adapted(model, inputs, device))
    if s.merge.adapters == "none":
        # every client scores with its own adapter; three of them (first, middle, last)
        # stand for all, to keep the cost of a row near the others'
        clients = sorted(local) or [0]
        scores = []
        for client in sorted({clients[0], clients[len(clients) // 2], clients[-1]}):
            adapted.load(server.start_for(client, r, local.get(client)))
            scores.append(accuracy(embed_adapted(model, inputs, device, amp)))
        return float(np.mean(scores))
    adapted.load(server.start_for(0, r + 1))
    return accuracy(embed_adapted(model, inputs, device, amp))


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
    parser.add_argument("--bundle", type=Path, help="run from a bundle made by --export (no pydantic, wheel or data needed)")
    parser.add_argument("--export", type=Path, help="write the bundle for another machine to this folder, and stop")
    parser.add_argument("--pooled", action="store_true", help="every training sample in one task at one site: the upper bound")
    args = parser.parse_args(argv)
    if args.export:
        export_bundle(args.export, args.scenarios)
        return
    bundle = json.loads((args.bundle / "rows.json").read_text()) if args.bundle else None
    if args.bundle:
        os.environ.setdefault("FEDRECON_MINILM_FILES", str((args.bundle / "minilm").resolve()))
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
            if bundle is not None:
                key = f"{name}|{'quick' if args.quick else 'full'}|{label}"
                if key not in bundle:  # refused by the scenario check when the bundle was made
                    continue
                setup = from_bundle(bundle[key], args.bundle.resolve())
            else:
                scenario = row_scenario(name, label, path, [*settings, *(quick if args.quick else []), *change,
                                                            "model.embedding_cache=null", *args.overrides])
                if scenario is None:
                    continue
                setup = setup_of(scenario)
            if args.pooled:
                setup, label = pooled(setup), f"{label} (pooled)"
            row = {"scenario": name, "run": label, **run(setup, device, every)}
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
