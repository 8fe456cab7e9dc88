"""Accuracy of a merged head on the test samples of the classes seen so far."""

from __future__ import annotations

import numpy as np
from torch import nn

from fedrecon.cache import EmbeddingCache, embed_samples
from fedrecon.data import ClassDataset
from fedrecon.heads import HeadSettings, build_head
from fedrecon.plan import Plan
from fedrecon.scenario import Scenario
from fedrecon.stats import ClassStats


def head_settings(scenario: Scenario) -> HeadSettings:
    """The scenario's head; the random projection is seeded by the scenario's seed."""
    m = scenario.merge
    return HeadSettings(m.head, m.metric, m.shrinkage, m.ridge_lambda, m.random_features, scenario.seed)


class Evaluator:
    """Embeds each test sample once per run (the backbone is frozen) and scores heads."""

    def __init__(self, dataset: ClassDataset, model: nn.Module, plan: Plan, head: HeadSettings | str, device,
                 cache: EmbeddingCache | None = None):
        self.dataset = dataset
        self.model = model
        self.plan = plan
        # A bare string is the metric of the nearest-mean head (the first version's argument).
        self.head = HeadSettings(metric=head) if isinstance(head, str) else head
        self.device = device
        self.cache = cache
        self._features: dict[int, np.ndarray] = {}

    def features(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = [int(c) for c in classes if int(c) not in self._features]
        if new:
            index, labels = self.plan.test_set(np.array(new))
            feats = embed_samples(self.model, self.dataset, index, self.device, self.cache)
            for c in new:
                self._features[c] = feats[labels == c]
        feats = np.concatenate([self._features[int(c)] for c in classes])
        labels = np.repeat(classes, [len(self._features[int(c)]) for c in classes])
        return feats, labels

    def accuracy(self, stats: ClassStats, classes: np.ndarray) -> float:
        """Accuracy over the test samples of ``classes``; a class without statistics
        counts its samples as wrong (the merged model cannot name it)."""
        if len(classes) == 0:
            return float("nan")
        feats, labels = self.features(classes)
        if len(stats) == 0:
            return 0.0
        pred = build_head(stats, self.head).predict(feats)
        return float((pred == labels).mean())
