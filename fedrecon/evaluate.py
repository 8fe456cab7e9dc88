"""Accuracy of a merged head on the test samples of the classes seen so far."""

from __future__ import annotations

import numpy as np
from torch import nn

from fedrecon.backbones import embed
from fedrecon.data import ClassDataset
from fedrecon.heads import NearestMean
from fedrecon.plan import Plan
from fedrecon.stats import ClassStats


class Evaluator:
    """Embeds each test sample once per run (the backbone is frozen) and scores heads."""

    def __init__(self, dataset: ClassDataset, model: nn.Module, plan: Plan, metric: str, device):
        self.dataset = dataset
        self.model = model
        self.plan = plan
        self.metric = metric
        self.device = device
        self._features: dict[int, np.ndarray] = {}

    def features(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = [int(c) for c in classes if int(c) not in self._features]
        if new:
            index, labels = self.plan.test_set(np.array(new))
            feats = embed(self.model, self.dataset.inputs[index], self.device)
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
        pred = NearestMean(stats, self.metric).predict(feats)
        return float((pred == labels).mean())
