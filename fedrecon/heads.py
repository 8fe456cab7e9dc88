"""Classifier heads built from merged class statistics."""

from __future__ import annotations

import numpy as np

from fedrecon.stats import ClassStats


class NearestMean:
    """Nearest class mean (ProtoNet / SimpleCIL) with euclidean or cosine distance."""

    def __init__(self, stats: ClassStats, metric: str = "euclidean"):
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.ids = stats.ids
        self.metric = metric
        self.prototypes = self._prepare(stats.means())

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(N, classes)``: larger is closer."""
        f = self._prepare(np.asarray(features, dtype=np.float64))
        if self.metric == "cosine":
            return f @ self.prototypes.T
        # -|f - p|^2 without the |f|^2 term, which does not change the argmax
        return 2 * f @ self.prototypes.T - (self.prototypes**2).sum(1)[None, :]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class ids of the nearest prototypes."""
        return self.ids[self.scores(features).argmax(1)]
