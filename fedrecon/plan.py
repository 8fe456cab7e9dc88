"""The arrival plan: which client learns which classes, from which samples, in which round."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrecon.scenario import Scenario, ScenarioError, Staggered, source_of


@dataclass(frozen=True)
class Arrival:
    """A task reaching a client: its classes and the training samples of each.

    ``samples[i]`` are dataset sample indices of class ``classes[i]``.
    """

    round: int
    client: int
    task: int
    classes: tuple[int, ...]
    samples: tuple[tuple[int, ...], ...]

    @property
    def sample_index(self) -> np.ndarray:
        return np.array([s for group in self.samples for s in group], dtype=np.int64)

    @property
    def sample_labels(self) -> np.ndarray:
        return np.repeat(np.array(self.classes, dtype=np.int64), [len(g) for g in self.samples])


@dataclass(frozen=True)
class Plan:
    rounds: int
    clients: int
    arrivals: tuple[Arrival, ...]
    test_samples: dict[int, tuple[int, ...]] = field(repr=False)

    def arrivals_at(self, round: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.round == round]

    def classes_seen(self, round: int) -> np.ndarray:
        """Sorted ids of the classes that arrived at any client by the end of ``round``."""
        seen = {c for a in self.arrivals if a.round <= round for c in a.classes}
        return np.array(sorted(seen), dtype=np.int64)

    def test_set(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices and labels of the test samples of ``classes``."""
        index = [np.array(self.test_samples[int(c)], dtype=np.int64) for c in classes]
        labels = [np.full(len(i), c, dtype=np.int64) for i, c in zip(index, classes)]
        if not index:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(index), np.concatenate(labels)


def _arrival_round(scenario: Scenario, client: int, task: int) -> int:
    schedule = scenario.tasks.schedule
    offset = client * schedule.offset if isinstance(schedule, Staggered) else 0
    return 1 + offset + task


def make_plan(scenario: Scenario, class_indices: list[np.ndarray]) -> Plan:
    """Deal classes to clients and samples to train and test, all from ``scenario.seed``.

    ``class_indices[c]`` are the dataset sample indices of class ``c``. The first
    ``test_shots`` of each class's shuffled samples are its test samples, the next
    ``train_shots`` its training samples, so the two never meet.
    """
    source = source_of(scenario)
    t = scenario.tasks
    problems = []
    if t.num_classes > len(class_indices):
        problems.append(source.error(("tasks", "num_classes"), f"{t.num_classes} classes requested, the dataset has {len(class_indices)}"))
    smallest = min((len(i) for i in class_indices), default=0)
    if t.train_shots + t.test_shots > smallest:
        problems.append(source.error(
            ("tasks", "train_shots"),
            f"train_shots + test_shots = {t.train_shots + t.test_shots}, but some classes have only {smallest} samples",
        ))
    if problems:
        raise ScenarioError(problems)

    rng = np.random.default_rng(scenario.seed)
    order = rng.permutation(len(class_indices))[: t.num_classes]
    shuffled = {int(c): rng.permutation(class_indices[c]) for c in order}
    test = {c: tuple(int(i) for i in s[: t.test_shots]) for c, s in shuffled.items()}
    train = {c: tuple(int(i) for i in s[t.test_shots : t.test_shots + t.train_shots]) for c, s in shuffled.items()}

    arrivals = []
    for j, start in enumerate(range(0, t.num_classes, t.classes_per_task)):
        classes = tuple(int(c) for c in order[start : start + t.classes_per_task])
        client, task = j % scenario.clients.count, j // scenario.clients.count
        arrivals.append(Arrival(_arrival_round(scenario, client, task), client, task, classes, tuple(train[c] for c in classes)))
    last = max(a.round for a in arrivals)
    rounds = scenario.rounds if scenario.rounds is not None else last
    if rounds < last:
        raise ScenarioError([source.error(("rounds",), f"{rounds} rounds, but the last task arrives in round {last}")])
    arrivals.sort(key=lambda a: (a.round, a.client))
    return Plan(rounds, scenario.clients.count, tuple(arrivals), test)
