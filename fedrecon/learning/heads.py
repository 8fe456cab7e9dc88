"""Classifier heads built from merged class statistics, keyed by their YAML name (``merge.head``).

Every head is a function of additive statistics only (:mod:`fedrecon.learning.stats`), so a
head built from the federated merge equals the head fitted on the pooled data.

- ``ncm``: nearest class mean (ProtoNet, SimpleCIL), euclidean or cosine.
- ``lda``: linear discriminant with a shared, shrunk covariance (as in SLCA / FeCAM's
  shared-covariance variant). With ``S = sum x x^T`` over all ``N`` samples and class
  means ``mu_c`` of ``n_c`` samples, the within-class covariance is
  ``C = (S - sum_c n_c mu_c mu_c^T) / (N - K)`` and the head uses
  ``C_a = (1 - a) C + a (tr(C) / d) I`` (shrinkage ``a`` toward the scaled identity,
  the target sklearn's ``shrunk_covariance`` uses). Scores are
  ``x C_a^-1 mu_c - mu_c C_a^-1 mu_c / 2`` (equal class priors).
- ``ridge``: RanPAC-style ridge regression on random ReLU features
  ``h = max(0, x W)``, ``W`` a seeded ``(d, M)`` standard normal matrix:
  ``B = (G + lam I)^-1 C`` with ``G = sum h h^T`` and ``C[:, c] = sum_{y=c} h``
  (one-hot targets); scores ``h B``. Solved by Cholesky in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedrecon.learning.stats import ClassStats, StatsSpec, random_features

if TYPE_CHECKING:
    from fedrecon.scenario.sections import MergeConfig


class Head(Protocol):
    ids: np.ndarray

    def scores(self, features: np.ndarray) -> np.ndarray: ...

    def parameters(self) -> tuple[dict[str, np.ndarray], dict]: ...


def _restored(cls: type, arrays: dict[str, np.ndarray], settings: dict):
    """A head of ``cls`` holding ``arrays`` and ``settings`` as its attributes, built
    without statistics: an exported head (:mod:`fedrecon.model`) scores with the very
    method the server scores with, so its predictions equal the run's."""
    head = object.__new__(cls)
    head.__dict__.update({k: np.asarray(v) for k, v in arrays.items()}, **settings)
    return head


def _predict(head: Head, features: np.ndarray) -> np.ndarray:
    return head.ids[head.scores(np.asarray(features, dtype=np.float64)).argmax(1)]


class NearestMean:
    """Nearest class mean (ProtoNet / SimpleCIL) with euclidean or cosine distance."""

    def __init__(self, stats: ClassStats, metric: str = "euclidean"):
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.ids = stats.ids
        self.metric = metric
        self.prototypes = self._prepare(stats.means())

    @staticmethod
    def spec(merge: MergeConfig, seed: int) -> StatsSpec:
        return StatsSpec()

    @classmethod
    def build(cls, stats: ClassStats, merge: MergeConfig, seed: int) -> "NearestMean":
        return cls(stats, merge.metric)

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
        return _predict(self, features)

    def parameters(self) -> tuple[dict[str, np.ndarray], dict]:
        """What :meth:`scores` reads: arrays (prototypes as scored) and settings."""
        return {"ids": self.ids, "prototypes": self.prototypes}, {"metric": self.metric}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> "NearestMean":
        return _restored(cls, arrays, {"metric": settings["metric"]})


def _missing(stats: ClassStats, name: str, head: str) -> None:
    if name not in stats.shared and name not in stats.extra:
        raise ValueError(f"head {head!r} needs the statistic {name!r}, which the clients did not send")


def _spd_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` for symmetric positive definite ``a`` (Cholesky, two triangular solves)."""
    low = np.linalg.cholesky(a)
    return np.linalg.solve(low.T, np.linalg.solve(low, b))


class SharedCovarianceLDA:
    """Linear discriminant with a shared within-class covariance shrunk toward ``tr/d * I``."""

    def __init__(self, stats: ClassStats, shrinkage: float):
        _missing(stats, "second_moment", "lda")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.ids = stats.ids
        means = stats.means()
        n, k, d = stats.counts.sum(), len(stats.ids), stats.dim
        within = stats.shared["second_moment"] - stats.sums.T @ means
        cov = (within + within.T) / (2 * max(n - k, 1.0))
        scale = np.trace(cov) / d
        spread = max(np.trace(stats.shared["second_moment"]) / (n * d), np.finfo(float).tiny)
        if scale <= 1e-9 * spread:
            # One sample per class leaves no within-class spread (what is left is
            # rounding): the identity is the only covariance the data supports.
            cov, scale = np.zeros((d, d)), 1.0
            shrinkage = 1.0
        self.covariance = (1 - shrinkage) * cov + shrinkage * scale * np.eye(d)
        try:
            self.weights = _spd_solve(self.covariance, means.T)  # (d, K)
        except np.linalg.LinAlgError:
            # Class means that are not the means of the samples (the fedrecon and fedproto
            # policies) can leave S - sum n mu mu^T indefinite: keep its positive part.
            values, vectors = np.linalg.eigh(cov)
            cov = (vectors * np.maximum(values, 0.0)) @ vectors.T
            self.covariance = (1 - shrinkage) * cov + shrinkage * scale * np.eye(d)
            try:
                self.weights = _spd_solve(self.covariance, means.T)
            except np.linalg.LinAlgError:
                raise ValueError(f"the within-class covariance of {int(n)} samples in {d} dimensions is singular; "
                                 "set merge.shrinkage above 0") from None
        self.bias = -0.5 * np.einsum("kd,dk->k", means, self.weights)

    @staticmethod
    def spec(merge: MergeConfig, seed: int) -> StatsSpec:
        return StatsSpec(second_moment=True)

    @classmethod
    def build(cls, stats: ClassStats, merge: MergeConfig, seed: int) -> "SharedCovarianceLDA":
        return cls(stats, merge.shrinkage)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weights + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        return _predict(self, features)

    def parameters(self) -> tuple[dict[str, np.ndarray], dict]:
        """What :meth:`scores` reads: the discriminant's weights and biases."""
        return {"ids": self.ids, "weights": self.weights, "bias": self.bias}, {}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> "SharedCovarianceLDA":
        return _restored(cls, arrays, {})


class RandomFeatureRidge:
    """RanPAC-style ridge regression on seeded random ReLU features (McDonnell et al., 2023)."""

    def __init__(self, stats: ClassStats, ridge_lambda: float, seed: int):
        _missing(stats, "gram", "ridge")
        _missing(stats, "rf_sums", "ridge")
        if ridge_lambda <= 0:
            raise ValueError(f"ridge_lambda must be > 0, got {ridge_lambda}")
        self.ids = stats.ids
        self.seed = seed
        gram = stats.shared["gram"]
        self.size = gram.shape[0]
        self.weights = _spd_solve(gram + ridge_lambda * np.eye(self.size), stats.extra["rf_sums"].T)  # (M, K)

    @staticmethod
    def spec(merge: MergeConfig, seed: int) -> StatsSpec:
        """The random projection is seeded by the scenario's seed."""
        return StatsSpec(random_features=merge.random_features, projection_seed=seed)

    @classmethod
    def build(cls, stats: ClassStats, merge: MergeConfig, seed: int) -> "RandomFeatureRidge":
        return cls(stats, merge.ridge_lambda, seed)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return random_features(np.asarray(features, dtype=np.float64), self.seed, self.size) @ self.weights

    def predict(self, features: np.ndarray) -> np.ndarray:
        return _predict(self, features)

    def parameters(self) -> tuple[dict[str, np.ndarray], dict]:
        """What :meth:`scores` reads: the ridge weights, and the projection's seed and size
        (the projection itself is drawn again from them, as every client draws it)."""
        return {"ids": self.ids, "weights": self.weights}, {"seed": int(self.seed), "size": int(self.size)}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], settings: dict) -> "RandomFeatureRidge":
        return _restored(cls, arrays, {"seed": int(settings["seed"]), "size": int(settings["size"])})


# keyed by ``merge.head`` (the schema's HEADS names them; a test keeps the two equal)
HEADS: dict[str, type] = {"ncm": NearestMean, "lda": SharedCovarianceLDA, "ridge": RandomFeatureRidge}


def head_spec(merge: MergeConfig, seed: int) -> StatsSpec:
    """The statistics clients must send for the scenario's head."""
    return HEADS[merge.head].spec(merge, seed)


def build_head(stats: ClassStats, merge: MergeConfig, seed: int) -> Head:
    """The head ``merge.head`` built from ``stats``."""
    return HEADS[merge.head].build(stats, merge, seed)


def fit_head(labels: np.ndarray, features: np.ndarray, merge: MergeConfig, seed: int) -> Head:
    """The head fitted at one site on all of ``features`` (the centralized reference)."""
    return build_head(ClassStats.from_features(labels, features, head_spec(merge, seed)), merge, seed)
