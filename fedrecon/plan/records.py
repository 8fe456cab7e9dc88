"""What a plan is: the arrivals of tasks at clients, round by round, and the test samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Arrival:
    """A task reaching a client: its classes and the training samples of each.

    ``samples[i]`` are dataset sample indices of class ``classes[i]``; ``task`` counts the
    client's arrivals from 0; ``revisits`` are the classes of ``classes`` that arrive a
    second time (with new samples).
    """

    round: int
    client: int
    task: int
    classes: tuple[int, ...]
    samples: tuple[tuple[int, ...], ...]
    revisits: tuple[int, ...] = ()

    @property
    def sample_index(self) -> np.ndarray:
        return np.array([s for group in self.samples for s in group], dtype=np.int64)

    @property
    def sample_labels(self) -> np.ndarray:
        return np.repeat(np.array(self.classes, dtype=np.int64), [len(g) for g in self.samples])

    def to_dict(self) -> dict:
        """JSON-able (checkpoints keep the tasks waiting for a retry)."""
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """The whole run, decided before it starts.

    ``present[r - 1]`` are the clients present (joined, not left, not dropped out) and
    sampled in round ``r``; every arrival lands in such a round.
    """

    rounds: int
    clients: int
    arrivals: tuple[Arrival, ...]
    test_samples: dict[int, tuple[int, ...]] = field(repr=False)
    present: tuple[frozenset[int], ...] = field(default=(), repr=False)
    warnings: tuple[str, ...] = ()

    def arrivals_at(self, round: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.round == round]

    def is_present(self, round: int, client: int) -> bool:
        return not self.present or client in self.present[round - 1]

    def classes_seen(self, round: int) -> np.ndarray:
        """Sorted ids of the classes that arrived at any client by the end of ``round``."""
        seen = {c for a in self.arrivals if a.round <= round for c in a.classes}
        return np.array(sorted(seen), dtype=np.int64)

    def at_one_site(self) -> "Plan":
        """The same arrivals, all at one site (client 0): each round's tasks of every
        client become one task there. The ``centralized`` baseline: one site holding all
        training data of the classes seen so far."""
        arrivals = []
        for r in range(1, self.rounds + 1):
            due = self.arrivals_at(r)
            if due:
                arrivals.append(replace(merge_arrivals(due, r), client=0, task=len(arrivals)))
        present = tuple(frozenset({0}) for _ in range(self.rounds))
        return replace(self, clients=1, arrivals=tuple(arrivals), present=present)

    def test_set(self, classes: np.ndarray, part: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices and labels of the test samples of ``classes`` (``part`` of each class's)."""
        index = [np.array(self.test_samples[int(c)][part], dtype=np.int64) for c in classes]
        labels = [np.full(len(i), c, dtype=np.int64) for i, c in zip(index, classes)]
        if not index:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(index), np.concatenate(labels)


def merge_arrivals(parts: list[Arrival], server_round: int) -> Arrival:
    """One arrival holding every class and sample of ``parts`` (client and task of the
    first and last part).

    A class present in several parts keeps all their samples: its counts and sums then
    cover all of them, exactly as if the parts had arrived apart.
    """
    if len(parts) == 1:
        return parts[0]
    samples: dict[int, list[int]] = {}
    revisits: set[int] = set()
    for part in parts:
        for cls, group in zip(part.classes, part.samples):
            samples.setdefault(cls, []).extend(group)
        revisits.update(part.revisits)
    classes = tuple(sorted(samples))
    return Arrival(
        round=server_round,
        client=parts[0].client,
        task=max(p.task for p in parts),
        classes=classes,
        samples=tuple(tuple(samples[c]) for c in classes),
        revisits=tuple(sorted(revisits)),
    )


def arrival_from_dict(d: dict) -> Arrival:
    """Inverse of :meth:`Arrival.to_dict` (an arrival read back from JSON)."""
    return Arrival(
        round=int(d["round"]),
        client=int(d["client"]),
        task=int(d["task"]),
        classes=tuple(int(c) for c in d["classes"]),
        samples=tuple(tuple(int(i) for i in g) for g in d["samples"]),
        revisits=tuple(int(c) for c in d["revisits"]),
    )
