"""Arrival processes: the round each task is due; presence: who is there in a round."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fedrecon.plan.samples import POISSON, PRESENCE, Due, Item, Samples, Task
from fedrecon.scenario.base import per_client
from fedrecon.scenario.errors import ScenarioError, source_of
from fedrecon.scenario.scenario import Scenario

# Without ``rounds``, a client that keeps dropping out is waited for at most this long.
MAX_WAIT = 10_000


def _arrive_synchronous(s: Scenario, tasks: list[list[Task]], data: Samples) -> list[Due]:
    every = s.tasks.arrival.every
    return [Due(c, 1 + k * every, task) for c, own in enumerate(tasks) for k, task in enumerate(own)]


def _arrive_staggered(s: Scenario, tasks: list[list[Task]], data: Samples) -> list[Due]:
    a = s.tasks.arrival
    offsets = a.offset if isinstance(a.offset, list) else [c * a.offset for c in range(s.clients.count)]
    return [Due(c, 1 + offsets[c] + k * a.every, task) for c, own in enumerate(tasks) for k, task in enumerate(own)]


def _arrive_poisson(s: Scenario, tasks: list[list[Task]], data: Samples) -> list[Due]:
    rates = per_client(s.tasks.arrival.rate, s.clients.count)
    dues = []
    for c, own in enumerate(tasks):
        rng = np.random.default_rng([s.seed, POISSON, c])
        times = np.cumsum(rng.exponential(1.0 / rates[c], size=len(own)))
        dues += [Due(c, max(1, math.ceil(tm)), task) for tm, task in zip(times, own)]
    return dues


def _arrive_explicit(s: Scenario, tasks: list[list[Task]], data: Samples) -> list[Due]:
    """Events name their classes, groups or a count; a bare event is the next task."""
    t = s.tasks
    dues, problems = [], []
    for client, events in sorted(t.arrival.clients.items()):
        flat = [item for task in tasks[client] for item in task]
        ends = np.cumsum([len(task) for task in tasks[client]]).tolist()
        cursor = 0
        for k, ev in enumerate(events):
            here = ("tasks", "arrival", "clients", client, k)
            if ev.classes is not None:
                items = [Item(c, data.shots(c), here + ("classes",)) for c in ev.classes]
            elif ev.groups is not None:
                items = [Item(c, data.shots(c), here + ("groups",)) for g in ev.groups for c in data.classes_of(g)]
            else:
                stop = cursor + ev.count if ev.count is not None else next((e for e in ends if e > cursor), cursor + 1)
                if stop > len(flat):
                    problems.append(source_of(s).error(
                        here, f"client {client} holds {len(flat)} classes of the split; the events up to this one ask for {stop}"))
                    continue
                items, cursor = flat[cursor:stop], stop
            dues.append(Due(client, ev.round, items))
    if problems:
        raise ScenarioError(problems)
    return dues


PROCESSES: dict[str, Callable[[Scenario, list[list[Task]], Samples], list[Due]]] = {
    "synchronous": _arrive_synchronous,
    "staggered": _arrive_staggered,
    "poisson": _arrive_poisson,
    "explicit": _arrive_explicit,
}


# --- who is there ---------------------------------------------------------------------------------

class Presence:
    """Clients present and sampled in each round; round ``r`` draws from its own stream,
    so the answer does not depend on how many rounds are looked at."""

    def __init__(self, s: Scenario):
        n = s.clients.count
        self.seed, self.count, self.fraction = s.seed, n, s.clients.fraction
        self.join = per_client(s.clients.join, n)
        self.leave = [lv if lv is not None else math.inf for lv in per_client(s.clients.leave, n)]
        self.dropout = np.array(per_client(s.clients.dropout, n), dtype=float)
        self._cache: dict[int, frozenset[int]] = {}

    def at(self, r: int) -> frozenset[int]:
        if r not in self._cache:
            rng = np.random.default_rng([self.seed, PRESENCE, r])
            away = rng.random(self.count) < self.dropout
            here = [c for c in range(self.count) if self.join[c] <= r < self.leave[c] and not away[c]]
            if self.fraction < 1.0 and here:
                k = max(1, math.ceil(self.fraction * len(here)))
                here = sorted(int(c) for c in rng.choice(here, size=k, replace=False))
            self._cache[r] = frozenset(here)
        return self._cache[r]

    def next(self, client: int, r: int, last: int | None) -> int | None:
        """First round from ``r`` the client is there, up to ``last`` (or its leaving)."""
        stop = min(last if last is not None else r + MAX_WAIT, self.leave[client] - 1)
        return next((x for x in range(max(r, 1), int(stop) + 1) if client in self.at(x)), None)
