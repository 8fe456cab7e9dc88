"""Splits: which client holds which classes, cut into tasks, in the order they arrive."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedrecon.plan.samples import Item, Samples, Task
from fedrecon.scenario.scenario import Scenario


def _chunks(seq: Sequence, size: int) -> list:
    return [list(seq[i : i + size]) for i in range(0, len(seq), size)]


def _deal(tasks: list[Task], count: int) -> list[list[Task]]:
    """Task ``j`` to client ``j % count``."""
    out: list[list[Task]] = [[] for _ in range(count)]
    for j, task in enumerate(tasks):
        out[j % count].append(task)
    return out


def _even_shares(total: int, holders: Sequence[int]) -> dict[int, int]:
    """``total`` samples divided between ``holders``: the first ones get one more."""
    base, extra = divmod(total, len(holders))
    return {h: base + (k < extra) for k, h in enumerate(sorted(holders))}


def _pools_to_tasks(pools: list[list[int]], shares: dict[tuple[int, int], int], size: int) -> list[list[Task]]:
    blame = ("tasks", "train_shots")
    return [[[Item(c, shares[c, client], blame) for c in chunk] for chunk in _chunks(pool, size)] for client, pool in enumerate(pools)]


def _split_disjoint(s: Scenario, data: Samples) -> list[list[Task]]:
    t = s.tasks
    tasks = [[Item(int(c), data.shots(int(c)), ("tasks", "train_shots")) for c in chunk] for chunk in _chunks(data.order, t.classes_per_task)]
    return _deal(tasks, s.clients.count)


def _split_overlap(s: Scenario, data: Samples) -> list[list[Task]]:
    t, n = s.tasks, s.clients.count
    rng = data.split_rng()
    n_shared = round(t.split.shared * t.num_classes)
    own, shared = data.order[: len(data.order) - n_shared], data.order[len(data.order) - n_shared :]
    pools: list[list[int]] = [[] for _ in range(n)]
    shares: dict[tuple[int, int], int] = {}
    for j, chunk in enumerate(_chunks(own, t.classes_per_task)):
        for c in chunk:
            pools[j % n].append(int(c))
            shares[int(c), j % n] = data.shots(int(c))
    among = t.split.among or n
    for c in shared:
        holders = sorted(int(h) for h in rng.choice(n, size=among, replace=False))
        for h, k in _even_shares(data.shots(int(c)), holders).items():
            pools[h].append(int(c))
            shares[int(c), h] = k
    # Shared classes are spread over a client's tasks, not all at its end.
    pools = [[int(c) for c in rng.permutation(pool)] for pool in pools]
    return _pools_to_tasks(pools, shares, t.classes_per_task)


def _split_dirichlet(s: Scenario, data: Samples) -> list[list[Task]]:
    t, n = s.tasks, s.clients.count
    rng = data.split_rng()
    pools: list[list[int]] = [[] for _ in range(n)]
    shares: dict[tuple[int, int], int] = {}
    for c in data.order:
        p = np.nan_to_num(rng.dirichlet(np.full(n, t.split.alpha)))
        if p.sum() <= 0:  # tiny alpha can underflow to all zeros: the class goes to one client
            p = np.eye(n)[rng.integers(n)]
        counts = rng.multinomial(data.shots(int(c)), p / p.sum())
        for h in np.flatnonzero(counts):
            pools[h].append(int(c))
            shares[int(c), int(h)] = int(counts[h])
    return _pools_to_tasks(pools, shares, t.classes_per_task)


def _split_explicit(s: Scenario, data: Samples) -> list[list[Task]]:
    t = s.tasks
    holders: dict[int, list[int]] = {}
    for client, classes in enumerate(t.split.clients):
        for c in classes:
            holders.setdefault(c, []).append(client)
    shares = {(c, h): k for c, hs in holders.items() for h, k in _even_shares(data.shots(c), hs).items()}
    return _pools_to_tasks([list(classes) for classes in t.split.clients], shares, t.classes_per_task)


def _chosen_groups(s: Scenario, data: Samples) -> list[str]:
    choice = s.tasks.split.groups
    if isinstance(choice, list):
        return choice
    names = data.group_names()
    return [names[i] for i in data.split_rng().permutation(len(names))[:choice]]


def _split_group(s: Scenario, data: Samples) -> list[list[Task]]:
    t = s.tasks
    tasks = []
    for chunk in _chunks(_chosen_groups(s, data), t.split.groups_per_task):
        tasks.append([Item(c, data.shots(c), ("tasks", "train_shots")) for g in chunk for c in data.classes_of(g)])
    return _deal(tasks, s.clients.count)


SPLITS: dict[str, Callable[[Scenario, Samples], list[list[Task]]]] = {
    "disjoint": _split_disjoint,
    "overlap": _split_overlap,
    "dirichlet": _split_dirichlet,
    "explicit": _split_explicit,
    "group": _split_group,
}
