"""Per-class sufficient statistics, merged by exact addition.

Besides counts and feature sums a head may need second-order statistics (see
:class:`StatsSpec`): the total second moment ``sum x x^T`` of the features (LDA), or
random ReLU features ``h = max(0, x W)`` summarised by their per-class sums and their
Gram matrix ``sum h h^T`` (ridge). All of them are sums over samples, so a client's
statistics of its new samples add to the global ones and any partition, order or
timing gives the centralized result.

The second moment is uncentred (centring needs the global mean, which no client has),
so the within-class scatter ``S - sum_c n_c mu_c mu_c^T`` loses about
``log10(|mean|^2 / variance)`` of float64's ~16 digits: harmless for normalised
embeddings, worth centring features for if they sit far from the origin.

A Gram of few samples travels as its rank factor (:func:`gram_factor`): the server reads
back ``L^T L``, equal to ``h^T h`` up to rounding (1e-12 of its largest entry), and adds it
like any other; bench/ridge_wire.py measures what it saves and that the head does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

# Seed stream of the random projection: np.random.default_rng([seed, _PROJECTION]).
# Apart from every other stream (the plan's 1..6 in fedrecon/plan/samples.py, the
# adapters' 202 and 404, the fine-tuning batches' 303; a test checks).
_PROJECTION = 101
# Rows of features turned into random features at once (bounds memory to ~chunk x M).
_CHUNK = 2048

# Per-class arrays (one row per id) and shared arrays (one for all classes), by name.
PER_CLASS = ("sums", "rf_sums")
SHARED = ("second_moment", "gram")
# The Gram of few samples travels as its rank factor (see gram_factor): under this share
# of M rows it is at most half the triangle's bytes, and the factor is cheap to compute.
FACTOR_ROWS = 0.25


@dataclass(frozen=True)
class StatsSpec:
    """What a client computes beyond counts and feature sums.

    Parameters
    ----------
    second_moment : bool
        Send ``sum x x^T`` over all new samples (``(d, d)``, symmetric).
    random_features : int
        ``M > 0``: send per-class sums of ``h = relu(x W)`` and their Gram ``sum h h^T``
        (``(M, M)``), with ``W`` a ``(d, M)`` standard normal matrix drawn from
        ``projection_seed`` (the same on every client).
    projection_seed : int
        Seed of ``W``.
    """

    second_moment: bool = False
    random_features: int = 0
    projection_seed: int = 0

    def keys(self) -> set[str]:
        """Array names a reply under this spec carries (besides ids, counts, sums)."""
        return ({"second_moment"} if self.second_moment else set()) | ({"rf_sums", "gram"} if self.random_features else set())


@lru_cache(maxsize=4)
def random_projection(seed: int, dim: int, size: int) -> np.ndarray:
    """The ``(dim, size)`` standard normal projection of the ridge head (read-only)."""
    w = np.random.default_rng([seed, _PROJECTION]).standard_normal((dim, size))
    w.setflags(write=False)
    return w


def random_features(features: np.ndarray, seed: int, size: int) -> np.ndarray:
    """``relu(features @ W)``, float64 ``(N, size)``."""
    w = random_projection(seed, features.shape[1], size)
    return np.maximum(np.asarray(features, dtype=np.float64) @ w, 0.0)


def _symmetric(a: np.ndarray) -> np.ndarray:
    """``a`` made exactly symmetric from its upper triangle (h.T @ h is so only up to rounding)."""
    return np.triu(a) + np.triu(a, 1).T


def gram_factor(h: np.ndarray) -> np.ndarray:
    """``L`` (``r x M``, r the rank of ``h``) with ``L^T L = h^T h``: the singular values
    times the right singular vectors of ``h``, each row's largest entry made positive.

    It is the Gram's own eigen-factor, so a reply carrying it tells the server exactly
    what the Gram tells it and nothing of the samples themselves (they stay mixed by
    ``h``'s left singular vectors, which are not sent). ``r M`` values instead of the
    triangle's ``M (M + 1) / 2``: 64 MB become 320 kB for 10 samples and M = 4000.
    Written here since it is three lines of numpy's SVD."""
    _, s, vt = np.linalg.svd(np.asarray(h, dtype=np.float64), full_matrices=False)
    keep = s > (s[0] * 1e-13 if len(s) else 0.0)
    rows = s[keep, None] * vt[keep]
    signs = np.sign(rows[np.arange(len(rows)), np.abs(rows).argmax(axis=1)])
    return rows * signs[:, None]


def gram_of(factor: np.ndarray) -> np.ndarray:
    """The Gram ``L^T L`` of a rank factor, exactly symmetric."""
    return _symmetric(factor.T @ factor)


def pack_symmetric(a: np.ndarray) -> np.ndarray:
    """Upper triangle (row-major) of a symmetric matrix: half the bytes on the wire."""
    return a[np.triu_indices(a.shape[0])]


def triangle_side(length: int) -> int | None:
    """``n`` with ``n (n + 1) / 2 == length``, or None."""
    n = int((np.sqrt(8 * length + 1) - 1) // 2)
    return n if n * (n + 1) // 2 == length else None


def unpack_symmetric(v: np.ndarray) -> np.ndarray:
    n = triangle_side(len(v))
    if n is None:
        raise ValueError(f"{len(v)} values are not the upper triangle of a square matrix")
    out = np.zeros((n, n), dtype=v.dtype)
    out[np.triu_indices(n)] = v
    out.T[np.triu_indices(n)] = v
    return out


@dataclass(frozen=True)
class ClassStats:
    """Counts, feature sums and optional second-order sums of a set of classes.

    ``ids`` is sorted and unique; row ``i`` of ``counts``, ``sums`` and every array of
    ``extra`` belongs to class ``ids[i]``; ``shared`` holds sums over all samples of
    all classes (``second_moment``, ``gram``). Arrays are float64 so that sums stay
    exact enough to make any order of merges agree to ~1e-12 relative.
    """

    ids: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    shared: Mapping[str, np.ndarray] = field(default_factory=dict)
    # the Gram's rank factor, how a client's few samples send it (to_arrays); merges drop it
    gram_factor: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return self.sums.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dim: int) -> "ClassStats":
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, dim)))

    @classmethod
    def from_features(cls, labels: np.ndarray, features: np.ndarray, spec: StatsSpec | None = None) -> "ClassStats":
        """Statistics of ``features`` (``(N, d)``) grouped by ``labels`` (``(N,)``)."""
        ids, inverse = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)
        features = np.asarray(features, dtype=np.float64)
        counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
        sums = np.zeros((len(ids), features.shape[1]))
        np.add.at(sums, inverse, features)
        spec = spec or StatsSpec()
        extra, shared = {}, {}
        if spec.second_moment:
            shared["second_moment"] = features.T @ features
        factor = None
        if spec.random_features:
            m = spec.random_features
            # few samples: one chunk, whose features also give the Gram's factor
            few = 0 < len(features) <= FACTOR_ROWS * m
            chunk = len(features) if few else _CHUNK
            rf_sums, gram = np.zeros((len(ids), m)), np.zeros((m, m))
            for start in range(0, len(features), chunk):
                h = random_features(features[start : start + chunk], spec.projection_seed, m)
                onehot = inverse[start : start + chunk] == np.arange(len(ids))[:, None]
                rf_sums += onehot @ h
                gram += h.T @ h
            extra["rf_sums"] = rf_sums
            shared["gram"] = _symmetric(gram)
            factor = gram_factor(h) if few else None
        return cls(ids, counts, sums, extra, shared, factor)

    def means(self) -> np.ndarray:
        """Class prototypes: sum / count, one row per id."""
        return self.sums / self.counts[:, None]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for a message or a file; shared matrices as upper triangles, the
        Gram of few samples as its rank factor ``gram_factor``."""
        shared = {k: pack_symmetric(self.shared[k]) for k in self.shared if not (k == "gram" and self.gram_factor is not None)}
        factor = {"gram_factor": self.gram_factor} if self.gram_factor is not None else {}
        return {"ids": self.ids, "counts": self.counts, "sums": self.sums, **self.extra, **shared, **factor}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "ClassStats":
        extra = {k: np.asarray(arrays[k]) for k in PER_CLASS[1:] if k in arrays}
        shared = {k: unpack_symmetric(np.asarray(arrays[k])) for k in SHARED if k in arrays}
        factor = np.asarray(arrays["gram_factor"]) if "gram_factor" in arrays else None
        if factor is not None:
            shared["gram"] = gram_of(factor)
        return cls(np.asarray(arrays["ids"]), np.asarray(arrays["counts"]), np.asarray(arrays["sums"]), extra, shared,
                   factor)

    def per_class(self) -> dict[str, np.ndarray]:
        """``sums`` and every extra per-class array, by name."""
        return {"sums": self.sums, **self.extra}

    def replace(self, **changes) -> "ClassStats":
        """The same statistics with ``changes``; the Gram's rank factor goes with the Gram:
        kept unless the shared arrays change (a site's renumbered reply still sends the
        factor of its few samples, not the whole Gram)."""
        fields = {"ids": self.ids, "counts": self.counts, "sums": self.sums, "extra": self.extra, "shared": self.shared}
        factor = None if "shared" in changes else self.gram_factor
        return ClassStats(**{**fields, **changes}, gram_factor=factor)


def add_stats(parts: Iterable[ClassStats], dim: int | None = None) -> ClassStats:
    """Exact merge: counts and per-class sums added class by class, shared sums added."""
    parts = [p for p in parts if len(p)]
    if not parts:
        if dim is None:
            raise ValueError("cannot infer the feature size of an empty merge; pass dim")
        return ClassStats.empty(dim)
    extra_keys, shared_keys = set(parts[0].extra), set(parts[0].shared)
    for p in parts[1:]:
        if set(p.extra) != extra_keys or set(p.shared) != shared_keys:
            raise ValueError(f"cannot add statistics of different kinds: {sorted(p.extra) + sorted(p.shared)} "
                             f"and {sorted(extra_keys) + sorted(shared_keys)}")
    ids = np.unique(np.concatenate([p.ids for p in parts]))
    counts = np.zeros(len(ids))
    rows = {k: np.zeros((len(ids), *v.shape[1:])) for k, v in parts[0].per_class().items()}
    for p in parts:
        where = np.searchsorted(ids, p.ids)  # p.ids are unique: plain fancy-index adds are exact
        counts[where] += p.counts
        for k, v in p.per_class().items():
            rows[k][where] += v
    shared = {}
    for k in sorted(shared_keys):
        shared[k] = parts[0].shared[k].copy()
        for p in parts[1:]:
            shared[k] += p.shared[k]
    sums = rows.pop("sums")
    return ClassStats(ids, counts, sums, rows, shared)
