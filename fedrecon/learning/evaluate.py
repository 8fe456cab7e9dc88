"""Accuracy of a merged head on the test samples of the classes seen so far."""

from __future__ import annotations

import numpy as np
from torch import nn

from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.data.dataset import ClassDataset
from fedrecon.learning.heads import build_head
from fedrecon.learning.stats import ClassStats
from fedrecon.plan.records import Plan
from fedrecon.scenario.scenario import Scenario


class Evaluator:
    """Embeds each test sample once per run (the backbone is frozen) and scores heads."""

    def __init__(self, dataset: ClassDataset, model: nn.Module, plan: Plan, scenario: Scenario, device,
                 cache: EmbeddingCache | None = None):
        self.dataset = dataset
        self.model = model
        self.plan = plan
        self.scenario = scenario  # its merge section and seed say which head is scored
        self.device = device
        self.cache = cache
        self._features: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        """Forget the test features (the model changed: a merged adapter)."""
        self._features = {}

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
        correct, total = self.class_counts(stats, classes)
        return float(correct.sum() / total.sum())

    def class_counts(self, stats: ClassStats, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per class of ``classes``: test samples named right, and test samples."""
        feats, labels = self.features(classes)
        total = np.array([len(self._features[int(c)]) for c in classes])
        if len(stats) == 0 or len(labels) == 0:
            return np.zeros(len(classes), dtype=np.int64), total
        hit = build_head(stats, self.scenario.merge, self.scenario.seed).predict(feats) == labels
        starts = np.concatenate([[0], np.cumsum(total)[:-1]])
        return np.add.reduceat(hit.astype(np.int64), starts) if len(hit) else np.zeros(0, np.int64), total


def count_correct(stats: ClassStats, scenario: Scenario, features: np.ndarray, labels: np.ndarray) -> int:
    """Test samples the scenario's head on the merged statistics names right (no
    statistics: none). Server and clients both score with this, so their accuracies
    agree on the same samples."""
    if len(stats) == 0 or len(labels) == 0:
        return 0
    return int((build_head(stats, scenario.merge, scenario.seed).predict(features) == labels).sum())


def eval_share(plan: Plan, classes: np.ndarray, client: int, clients: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices and labels of ``client``'s share of the test samples of ``classes``.

    The ``k``-th test sample of each class goes to client ``k % clients``: every sample
    is scored by exactly one client, and the shares do not depend on who is connected.
    """
    return plan.test_set(classes, slice(client, None, clients))
