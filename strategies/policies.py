"""Prototype merge policies, keyed by their YAML name (``merge.prototypes``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fedrecon.stats import ClassStats, add_stats


class MergePolicy(Protocol):
    """Folds one round's client updates into the global statistics.

    Must not modify ``current``: a rejected round keeps it as it was.
    """

    def merge(self, current: ClassStats, updates: list[ClassStats]) -> ClassStats: ...


PROTOTYPE_POLICIES: dict[str, Callable[[], MergePolicy]] = {}


def register(name: str):
    def add(cls):
        PROTOTYPE_POLICIES[name] = cls
        return cls

    return add


@register("exact")
class ExactMerge:
    """Counts and sums added per class: equal to the centralized statistics for any
    partition, order or timing of clients, and for classes revisited by any client."""

    def merge(self, current: ClassStats, updates: list[ClassStats]) -> ClassStats:
        return add_stats([current, *updates], dim=current.dim)


def make_policy(name: str) -> MergePolicy:
    if name not in PROTOTYPE_POLICIES:
        raise ValueError(f"unknown merge.prototypes {name!r}; allowed: {', '.join(sorted(PROTOTYPE_POLICIES))}")
    return PROTOTYPE_POLICIES[name]()
