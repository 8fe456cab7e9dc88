"""A client's task under adapters, and the server's adapter state (no Flower: the
ClientApp, the server's phases and ``bench/adapters.py`` call these)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedrecon.learning.adapter_merges import make_adapter_merge
from fedrecon.learning.drift import compensate, drift_from_sums, drift_sums
from fedrecon.learning.heads import head_spec
from fedrecon.learning.lora import Adapted
from fedrecon.learning.stats import ClassStats, add_stats
from fedrecon.learning.training import embed_adapted, train_adapter
from fedrecon.scenario.scenario import Scenario
from fedrecon.scenario.sections import AdaptersConfig


def reply_factors(adapted: Adapted, policy: str) -> dict[str, np.ndarray]:
    """The factors a client sends under ``policy`` (only adapter weights, never the backbone)."""
    keep = make_adapter_merge(policy).replies
    return {k: v for k, v in adapted.factors().items() if k[-1] in keep}


def start_factors(adapted: Adapted, scenario: Scenario, base: Mapping[str, np.ndarray], client: int,
                  round: int) -> dict[str, np.ndarray]:
    """The factors a client starts a task of ``round`` from: the server's adapter
    ``base`` (``merge.adapters: none``: the client's own), completed by the policy."""
    policy = make_adapter_merge(scenario.merge.adapters)
    return policy.client_start(base, adapted.shapes(), scenario.adapters, scenario.seed, client, round)


@dataclass
class TaskResult:
    """What a client's task under adapters gives: statistics (under its adapter after
    training), the factors it sends (empty: it did not train, or policy ``none``), its
    own factors to keep (policy ``none``), and drift sums (``compensate``) or None."""

    stats: ClassStats
    factors: dict
    local: dict
    drift: tuple[np.ndarray, np.ndarray] | None
    loss: float
    seconds: float


def client_task(adapted: Adapted, start: Mapping[str, np.ndarray], inputs: np.ndarray, labels: np.ndarray,
                task_number: int, device: torch.device, scenario: Scenario,
                prototypes: np.ndarray | None = None) -> TaskResult:
    """One task on a client: load the adapter it starts from, train it if the schedule
    says so, then summarise the task's samples under the adapter it ends with.

    ``prototypes`` (the server's class means, ``compensate`` only) are what the drift
    sums are measured against: features of the task's samples before and after training.
    """
    a, policy = scenario.adapters, scenario.merge.adapters
    begin = time.perf_counter()
    adapted.load(start)
    # with adapter steps the adapter was trained and merged before this message: the
    # task is only summarised, under the merged adapter it starts from
    lr = a.lr_for(task_number) if a.steps == 0 else 0.0
    measure = lr > 0 and a.staleness == "compensate" and prototypes is not None and len(prototypes) > 0
    before = embed_adapted(adapted.model, inputs, device, a.mixed_precision) if measure else None
    loss = float("nan")
    if lr > 0:
        loss = train_adapter(adapted, inputs, labels, lr, device, scenario.seed,
                             factors=make_adapter_merge(policy).replies or "AB")["loss"]
    feats = embed_adapted(adapted.model, inputs, device, a.mixed_precision)
    stats = ClassStats.from_features(labels, feats, head_spec(scenario.merge, scenario.seed))
    factors = reply_factors(adapted, policy) if lr > 0 else {}
    local = adapted.factors() if policy == "none" else {}
    drift = drift_sums(before, feats, prototypes, a.drift_sigma) if measure else None
    return TaskResult(stats, factors, local, drift, loss, time.perf_counter() - begin)


@dataclass
class StepResult:
    """One adapter step's reply: the factors (empty: the schedule does not train this
    task), the last epoch's mean loss, and the task's class counts and feature sums under
    the adapter the step started from (None when nothing trained)."""

    factors: dict[str, np.ndarray]
    loss: float
    classes: ClassStats | None


def adapt_step(adapted: Adapted, start: Mapping[str, np.ndarray], inputs: np.ndarray, labels: np.ndarray,
               task_number: int, device: torch.device, scenario: Scenario, round: int,
               step: int, negatives: np.ndarray | None = None) -> StepResult:
    """One adapter step (``adapters.steps`` > 0): from the merged adapter ``start``,
    train ``epochs`` on the task's samples if the schedule says so; ``negatives``: the
    mean features of the federation's other classes (``adapters.classifier: federation``)."""
    lr = scenario.adapters.lr_for(task_number, round)
    if lr <= 0:
        return StepResult({}, float("nan"), None)
    adapted.load(start)
    replies = make_adapter_merge(scenario.merge.adapters).replies
    out = train_adapter(adapted, inputs, labels, lr, device, scenario.seed, factors=replies, stream=(round, step),
                        negatives=negatives)
    return StepResult(reply_factors(adapted, scenario.merge.adapters), out["loss"], out["classes"])


def anyone_trains(adapters: AdaptersConfig, task_numbers: Iterable[int], round: int) -> bool:
    """Whether an adapter step of ``round`` trains anything: the schedule trains the task
    of at least one of its clients (``task_numbers``: each one's tasks learned before)."""
    return any(adapters.lr_for(n, round) > 0 for n in task_numbers)


def federation_negatives(known: ClassStats, own: np.ndarray) -> np.ndarray:
    """The mean features of the known classes not in ``own``: a client's fixed negatives."""
    return known.means()[~np.isin(known.ids, own)]


def trained_columns(stats: ClassStats, adapters: AdaptersConfig) -> ClassStats:
    """Classes' counts and the sums of the features the adapter's loss sees: all of a
    summary's, or under ``adapters.features: both`` its adapted half (the last columns)."""
    d = adapters.trained_dim(stats.dim)
    return ClassStats(stats.ids.astype(np.int64), stats.counts, stats.sums[:, stats.dim - d:])


def known_after(earlier: ClassStats | None, step: list[ClassStats]) -> ClassStats:
    """The classes the federation knows after an adapter step: the step's trainers'
    counts and sums, added (a class several of them hold pools all its samples), and
    the earlier ones' rows of classes the step did not see."""
    newer = add_stats([ClassStats(c.ids, c.counts, c.sums) for c in step])
    if earlier is None:
        return newer
    old = ~np.isin(earlier.ids, newer.ids)
    return add_stats([newer, ClassStats(earlier.ids[old], earlier.counts[old], earlier.sums[old])])


class AdapterServer:
    """The server's adapter state under a merge policy, and the staleness policy.

    ``version`` counts the merges that changed the global adapter: statistics merged
    before a change were computed under an older adapter (stale under ``keep``).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], scenario: Scenario):
        self.shapes, self.scenario = dict(shapes), scenario
        self.policy = make_adapter_merge(scenario.merge.adapters)
        self.state = self.policy.init(self.shapes, scenario.adapters, scenario.seed)
        self.version = 0

    @property
    def merges(self) -> bool:
        """Whether clients send factors the server folds (every policy but ``none``)."""
        return bool(self.policy.replies)

    def start_for(self, client: int, round: int, local: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Factors client ``client`` starts a task of ``round`` from (``none``: its own)."""
        base = (local or {}) if not self.merges else self.state
        return self.policy.client_start(base, self.shapes, self.scenario.adapters, self.scenario.seed, client, round)

    def merge(self, factors: list[Mapping[str, np.ndarray]], weights: list[float]) -> bool:
        """Fold a round's (already validated) factors in; True if the global adapter changed."""
        if not factors or not self.merges:
            return False
        self.state = self.policy.merge(self.state, factors, weights, self.scenario.adapters)
        self.version += 1
        return True

    def refresh(self, stats: ClassStats, drifts: list[tuple[np.ndarray, np.ndarray]]) -> ClassStats:
        """Old statistics after a change of the adapter: as they are (``keep``) or moved
        by the drift the round's clients measured (``compensate``)."""
        if self.scenario.adapters.staleness != "compensate" or not drifts or not len(stats):
            return stats
        sums = sum(d[0] for d in drifts)
        weights = sum(d[1] for d in drifts)
        return compensate(stats, drift_from_sums(sums, weights))

    def payload(self) -> dict[str, np.ndarray]:
        """The global state as it travels down (factors only, never the backbone)."""
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.state.items()}
