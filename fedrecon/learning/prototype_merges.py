"""Merge policies of class statistics, keyed by their YAML name (``merge.prototypes``),
in numpy only (those of LoRA adapters are in :mod:`fedrecon.learning.adapter_merges`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from fedrecon.learning.stats import ClassStats, add_stats
from fedrecon.plugins import PluginError, load_object
from fedrecon.registry import registrar


class MergePolicy(Protocol):
    """Folds one round's client updates into the global statistics.

    Must not modify ``current``: a rejected round keeps it as it was. Optional members:
    ``sums_only = True`` (the policy needs only the sum of a round's updates, so that
    ``privacy.secure_aggregation`` may hand it that sum as the round's one update; a
    policy without it may say in ``needs`` what it needs more than the sum for),
    ``per_client = True`` (the server keeps each client's statistics apart and scores
    each client's own head: ``local``), ``one_site = True`` (the plan's tasks all go to
    one client: ``centralized``), and ``state() -> dict`` / ``restore(dict)`` for what
    the policy keeps besides the statistics (checkpoints; JSON-able).

    A plug-in is named in ``merge.prototypes`` as ``package.module:attribute``: a class
    (or any callable taking no arguments) whose instances follow this protocol.
    """

    def merge(self, current: ClassStats, updates: list[ClassStats]) -> ClassStats: ...


def policy_state(policy: MergePolicy) -> dict:
    """JSON-able state a policy keeps besides the statistics (for checkpoints)."""
    return policy.state() if hasattr(policy, "state") else {}


def restore_policy(policy: MergePolicy, state: dict) -> None:
    if hasattr(policy, "restore"):
        policy.restore(state)


PROTOTYPE_POLICIES: dict[str, Callable[[], MergePolicy]] = {}


register = registrar(PROTOTYPE_POLICIES)


@register("exact")
class ExactMerge:
    """Counts and sums added per class: equal to the centralized statistics for any
    partition, order or timing of clients, and for classes revisited by any client."""

    sums_only = True  # the round's sum is all it needs: secure aggregation gives it that

    def merge(self, current: ClassStats, updates: list[ClassStats]) -> ClassStats:
        return add_stats([current, *updates], dim=current.dim)


@register("local")
class LocalOnly(ExactMerge):
    """No merge, a baseline: each client knows only the classes it learned itself.

    The server still adds the statistics (so the run folder shows what a merge would
    know), but keeps each client's own as well, and evaluation scores every client's
    own head on the classes seen by the federation and averages over clients.
    """

    per_client = True
    sums_only = False
    needs = "keeps each client's statistics apart"


@register("centralized")
class Centralized(ExactMerge):
    """One site learns every arrival, a baseline: the ceiling of all training data of
    the classes seen so far in one place. The run's plan moves each round's tasks of
    every client to one client (``Plan.at_one_site``); the merge adds, as ``exact``.
    """

    one_site = True
    sums_only = False  # one site: a round's sum is that site's statistics
    needs = "runs one site"


def _shared_sum(current: ClassStats, updates: list[ClassStats]) -> dict[str, np.ndarray]:
    """Shared second-order sums are not prototypes: every policy adds them exactly."""
    parts = [p for p in (current, *updates) if len(p)]
    if not parts:
        return {}
    return dict(add_stats(parts).shared)


def _from_means(ids: list[int], counts: dict[int, float], means: dict[int, dict[str, np.ndarray]],
                shared: dict[str, np.ndarray], dim: int) -> ClassStats:
    """Statistics whose class means are ``means`` (count x mean as the sums)."""
    if not ids:
        return ClassStats.empty(dim)
    order = sorted(ids)
    n = np.array([counts[c] for c in order])
    rows = {k: n[:, None] * np.stack([means[c][k] for c in order]) for k in means[order[0]]}
    sums = rows.pop("sums")
    return ClassStats(np.array(order, dtype=np.int64), n, sums, rows, shared)


def _class_means(stats: ClassStats) -> tuple[dict[int, float], dict[int, dict[str, np.ndarray]]]:
    rows = stats.per_class()
    counts = {int(c): float(n) for c, n in zip(stats.ids, stats.counts)}
    means = {int(c): {k: v[i] / stats.counts[i] for k, v in rows.items()} for i, c in enumerate(stats.ids)}
    return counts, means


@register("fedrecon")
class FedReconOnlineMean:
    """Online prototype averaging as the Federated Reconnaissance code does it
    (Hendryx et al., 2021, ``FederatedProtoNet.merge_models``), a baseline.

    A client starts a round from the server's prototypes, so its prototype of a class
    the server already knew averages the server's ``n_old`` samples and its ``m`` new
    ones; the server then moves its prototype toward that running prototype with the
    weight of the new samples only, ``p += m / (n_old + m) * (q - p)``. New classes
    (one or several clients in a round) come out exact; a revisited class's new
    samples are under-weighted by ``m / (n_old + m)``.
    """

    needs = "averages each client's prototype in turn"

    def merge(self, current: ClassStats, updates: list[ClassStats]) -> ClassStats:
        before_n, before_mean = _class_means(current)
        counts, means = dict(before_n), {c: dict(m) for c, m in before_mean.items()}
        for update in updates:
            for i, c in enumerate(update.ids.tolist()):
                m = float(update.counts[i])
                new = {k: v[i] for k, v in update.per_class().items()}
                if c in before_n:  # the client's running prototype includes the server's samples
                    n_old = before_n[c]
                    q = {k: (n_old * before_mean[c][k] + new[k]) / (n_old + m) for k in new}
                else:
                    q = {k: new[k] / m for k in new}
                if c in counts:
                    counts[c] += m
                    means[c] = {k: means[c][k] + (m / counts[c]) * (q[k] - means[c][k]) for k in q}
                else:
                    counts[c], means[c] = m, q
        return _from_means(list(counts), counts, means, _shared_sum(current, updates), current.dim)


@register("fedproto")
class FedProtoUnweighted:
    """Unweighted mean of client prototypes (Tan et al., 2022, FedProto's
    ``proto_aggregation``), a baseline.

    Each reply's class mean counts once, whatever its number of samples: a class
    held by a big and a small client, or revisited with a few samples, drifts toward
    the smaller contributions. Keeps the number of contributions per class.
    """

    needs = "averages client prototypes"

    def __init__(self):
        self.contributions: dict[int, int] = {}

    def merge(self, current: ClassStats, updates: list[ClassStats]) -> ClassStats:
        counts, means = _class_means(current)
        seen = dict(self.contributions)
        for update in updates:
            for i, c in enumerate(update.ids.tolist()):
                m = float(update.counts[i])
                q = {k: v[i] / m for k, v in update.per_class().items()}
                k_old = seen.get(c, 0)
                means[c] = {k: (k_old * means[c][k] + q[k]) / (k_old + 1) for k in q} if k_old else q
                counts[c] = counts.get(c, 0.0) + m
                seen[c] = k_old + 1
        merged = _from_means(list(counts), counts, means, _shared_sum(current, updates), current.dim)
        self.contributions = seen
        return merged

    def state(self) -> dict:
        return {"contributions": {str(c): k for c, k in self.contributions.items()}}

    def restore(self, state: dict) -> None:
        self.contributions = {int(c): int(k) for c, k in state.get("contributions", {}).items()}


def make_policy(name: str) -> MergePolicy:
    """A new policy: a built-in by name, or a plug-in by import path (:class:`PluginError`
    when neither, or when the plug-in does not follow :class:`MergePolicy`)."""
    if name in PROTOTYPE_POLICIES:
        return PROTOTYPE_POLICIES[name]()
    if ":" not in name:
        raise PluginError(f"unknown policy {name!r}; allowed: {', '.join(sorted(PROTOTYPE_POLICIES))}, "
                          "or package.module:attribute")
    factory = load_object(name)
    try:
        policy = factory()
    except Exception as exc:  # a plug-in that cannot be made: say so in one line
        raise PluginError(f"{name}() failed: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(policy, "merge", None)):
        raise PluginError(f"{name} makes a {type(policy).__name__} without a merge(current, updates) method")
    return policy


def is_per_client(policy: MergePolicy) -> bool:
    return bool(getattr(policy, "per_client", False))


def needs_only_sums(policy: MergePolicy) -> bool:
    return bool(getattr(policy, "sums_only", False))


def needs_beyond_sums(policy: MergePolicy) -> str:
    """What a policy that needs more than a round's sum needs it for, in a few words."""
    return getattr(policy, "needs", "does not say it needs only a round's sum (sums_only = True)")


def is_one_site(policy: MergePolicy) -> bool:
    return bool(getattr(policy, "one_site", False))


def replay(plan, features: np.ndarray, policy_name: str, spec=None) -> ClassStats:
    """The server's merges of ``plan`` under a policy, round by round, without Flower.

    ``features[i]`` is the feature of dataset sample ``i`` (rows of unused samples may
    be anything). For benchmarks and tests of the policies themselves.
    """
    policy, merged = make_policy(policy_name), ClassStats.empty(features.shape[1])
    for r in range(1, plan.rounds + 1):
        updates = [ClassStats.from_features(a.sample_labels, features[a.sample_index], spec) for a in plan.arrivals_at(r)]
        merged = policy.merge(merged, updates)
    return merged
