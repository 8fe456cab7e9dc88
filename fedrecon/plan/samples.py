"""The seeded sample order of each class, and the items a task is made of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrecon.scenario.scenario import Scenario

# Seed streams: np.random.default_rng([seed, STREAM, ...]). The class order and the
# samples of the drawn classes use default_rng(seed) alone, as the first plans did.
SAMPLES, SPLIT, POISSON, PRESENCE, REVISITS, TEST = 1, 2, 3, 4, 5, 6


@dataclass
class Item:
    """One class of a task: how many training samples it brings, and the key to blame."""

    cls: int
    shots: int
    blame: tuple
    revisit: bool = False


Task = list[Item]


@dataclass
class Due:
    client: int
    round: int
    items: Task


class Samples:
    """What the plan needs from the dataset, plus the seeded sample order of each class.

    With ``test_indices`` (a dataset with an official test split) ``class_indices`` are
    the training candidates and test samples come from ``test_indices`` only.
    """

    def __init__(self, scenario: Scenario, class_indices: list[np.ndarray], groups: Sequence[str] | None,
                 test_indices: list[np.ndarray] | None = None, names: Sequence[str] | None = None):
        self.scenario = scenario
        self.names = tuple(names) if names is not None else None
        self.class_indices = class_indices
        self.test_indices = test_indices
        # Training samples start after the test samples, unless those are a split of their own.
        self.first_train = 0 if test_indices is not None else (scenario.tasks.test_shots or 0)
        self.groups = tuple(groups) if groups is not None else None
        rng = np.random.default_rng(scenario.seed)
        drawn = scenario.tasks.num_classes or 0
        self.order = rng.permutation(len(class_indices))[:drawn]
        self.shuffled = {int(c): rng.permutation(class_indices[c]) for c in self.order}
        self.cursor: dict[int, int] = {}

    def named(self, classes: Sequence[int], counts: Sequence[int] | None = None, shown: int = 5) -> str:
        """Classes as an error line names them: id, name if known, and a count of each."""
        def one(c: int) -> str:
            name = f" {self.names[c]!r}" if self.names is not None else ""
            return f"{c}{name}" + (f" ({counts[c]})" if counts is not None else "")

        more = f" and {len(classes) - shown} more" if len(classes) > shown else ""
        return ", ".join(one(int(c)) for c in classes[:shown]) + more

    def split_rng(self) -> np.random.Generator:
        return np.random.default_rng([self.scenario.seed, SPLIT])

    def group_names(self) -> list[str]:
        return list(dict.fromkeys(self.groups or ()))

    def classes_of(self, group: str) -> list[int]:
        return [c for c, g in enumerate(self.groups or ()) if g == group]

    def samples_of(self, cls: int) -> np.ndarray:
        if cls not in self.shuffled:
            rng = np.random.default_rng([self.scenario.seed, SAMPLES, cls])
            self.shuffled[cls] = rng.permutation(self.class_indices[cls])
        return self.shuffled[cls]

    def shots(self, cls: int) -> int:
        """Training samples of a class per arrival: ``train_shots``, or all it has when null."""
        t = self.scenario.tasks
        return t.train_shots if t.train_shots is not None else len(self.class_indices[cls]) - self.first_train

    def test(self, cls: int) -> tuple[int, ...]:
        shots = self.scenario.tasks.test_shots
        if self.test_indices is None:
            return tuple(int(i) for i in self.samples_of(cls)[:shots])
        chosen = np.random.default_rng([self.scenario.seed, TEST, cls]).permutation(self.test_indices[cls])
        return tuple(int(i) for i in chosen[:shots])

    def take(self, cls: int, shots: int) -> tuple[int, ...] | None:
        """The next ``shots`` unused training samples of ``cls``; None when too few are left.

        The first ``test_shots`` samples are the test samples: the cursor starts after
        them, so a training sample is never a test sample and never used twice.
        """
        start = self.cursor.get(cls, self.first_train)
        samples = self.samples_of(cls)
        if start + shots > len(samples):
            return None
        self.cursor[cls] = start + shots
        return tuple(int(i) for i in samples[start : start + shots])
