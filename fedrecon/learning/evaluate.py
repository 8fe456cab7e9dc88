"""Accuracy of a merged head on the test samples of the classes seen so far."""

from __future__ import annotations

import numpy as np
from torch import nn

from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.data.dataset import ClassDataset
from fedrecon.dp import released
from fedrecon.learning.head_cache import HeadCache
from fedrecon.learning.heads import build_head
from fedrecon.learning.stats import ClassStats
from fedrecon.plan.records import Plan
from fedrecon.scenario.scenario import Scenario


def scored_heads(scenario: Scenario, noisy: bool = False) -> HeadCache:
    """The heads the scenario's scoring builds, cached by the statistics they are built from.
    Noisy statistics (privacy.dp) are post-processed before a head is built (free under DP):
    the cache knows them by what the clients sent, so an unchanged round does neither again."""
    return HeadCache(lambda stats: build_head(released(stats) if noisy else stats, scenario.merge, scenario.seed))


class Evaluator:
    """Embeds each test sample once per run (the backbone is frozen) and scores heads,
    building a head and answering a sample again only when the statistics changed
    (:class:`HeadCache`: a round that learns nothing costs its new test samples only)."""

    def __init__(self, dataset: ClassDataset, model: nn.Module, plan: Plan, scenario: Scenario, device,
                 cache: EmbeddingCache | None = None, noisy: bool = False, heads: HeadCache | None = None):
        self.dataset = dataset
        self.model = model
        self.plan = plan
        self.scenario = scenario  # its merge section and seed say which head is scored
        self.device = device
        self.cache = cache
        self._features: dict[int, np.ndarray] = {}
        # ``heads``: the server's own (ServerState.heads), shared with the round's phases
        self.heads = heads if heads is not None else scored_heads(scenario, noisy)

    def reset(self) -> None:
        """Forget the test features and the answers (the model changed: a merged adapter)."""
        self._features = {}
        self.heads.clear()

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

    def accuracy(self, stats: ClassStats, classes: np.ndarray, key=None) -> float:
        """Accuracy over the test samples of ``classes``; a class without statistics
        counts its samples as wrong (the merged model cannot name it). ``key`` names
        whose statistics these are (a client's own, under ``local``) for the cache."""
        if len(classes) == 0:
            return float("nan")
        correct, total = self.class_counts(stats, classes, key)
        return float(correct.sum() / total.sum())

    def class_counts(self, stats: ClassStats, classes: np.ndarray, key=None) -> tuple[np.ndarray, np.ndarray]:
        """Per class of ``classes``: test samples named right, and test samples."""
        self.features(classes)
        total = np.array([len(self._features[int(c)]) for c in classes], dtype=np.int64)
        if len(stats) == 0 or not total.sum():
            return np.zeros(len(classes), dtype=np.int64), total
        answers = self.heads.answers(stats, self._features, classes, key)
        return np.array([int((a == c).sum()) for a, c in zip(answers, classes)], dtype=np.int64), total


def count_correct(stats: ClassStats, scenario: Scenario, features: np.ndarray, labels: np.ndarray) -> int:
    """Test samples the scenario's head on the merged statistics names right (no
    statistics: none). Server and clients both score with this, so their accuracies
    agree on the same samples."""
    if len(stats) == 0 or len(labels) == 0:
        return 0
    if scenario.privacy.dp is not None:  # noisy statistics, post-processed as the server's scoring does
        stats = released(stats)
    return int((build_head(stats, scenario.merge, scenario.seed).predict(features) == labels).sum())


def eval_share(plan: Plan, classes: np.ndarray, client: int, clients: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices and labels of ``client``'s share of the test samples of ``classes``.

    The ``k``-th test sample of each class goes to client ``k % clients``: every sample
    is scored by exactly one client, and the shares do not depend on who is connected.
    """
    return plan.test_set(classes, slice(client, None, clients))
