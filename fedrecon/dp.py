"""Differential privacy of the released class statistics: clipping, Gaussian noise, accounting.

A sample's feature vector is clipped to L2 norm ``clip``; it then adds 1 to its class's
count, at most ``clip`` (in L2) to its class's sum and, for the ``lda`` head, at most
``clip^2`` (in Frobenius norm, on the upper triangle that travels) to the second moment:
the release's L2 sensitivity to one sample is ``sqrt(1 + clip^2 [+ clip^4])``. Every
released count, sum and second-moment entry gets Gaussian noise of standard deviation
``noise_multiplier * sensitivity``; under secure aggregation each of at least ``t``
summed clients adds its ``1 / t`` of the variance, so the round's sum carries at least the
noise the accountant assumes.

The ``ridge`` head releases besides them the per-class sums of random features
``h = relu(x W)`` and their Gram ``sum h h^T``. ``W`` is public (seeded), so a clipped
sample's ``h`` is at most ``b = ||W||_2 clip`` long (:func:`feature_bound`: ``relu`` never
lengthens a vector), and adds at most ``b`` to its class's random-feature sum and ``b^2``
(Frobenius norm of the triangle that travels) to the Gram. One noise level for all four
blocks would be the Gram's, ``b^2`` (thousands), on every count and sum: instead each block
gets noise in proportion to its own bound (:func:`block_scales`: 1, ``clip``, ``b``,
``b^2``), ``sqrt(4)`` times the multiplier. Divided block by block by those scales, the
release changes by at most ``sqrt(4)`` in L2 and carries noise of the multiplier times that:
the same Gaussian mechanism, accounted the same way, with each block's noise relative to its
own range equal (the Gram's no longer drowning the rest).

Each round that releases statistics is one Gaussian mechanism; the rounds compose (RDP,
``dp_accounting``), conservatively as if a person could contribute to every round: the
noise multiplier is calibrated so that the planned rounds spend exactly the target epsilon
at the target delta, and a round that would spend more is not run. The unit of privacy is a
sample (a drawing, a sentence).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from fedrecon.learning.stats import PER_CLASS, ClassStats, StatsSpec, random_projection
from fedrecon.secagg.layout import Layout

# what a ridge release holds, each block noised in proportion to its own bound
RIDGE_BLOCKS = ("counts", "sums", "rf_sums", "gram")


def sensitivity(clip: float, second_moment: bool) -> float:
    return math.sqrt(1.0 + clip**2 + (clip**4 if second_moment else 0.0))


def release_sensitivity(spec: StatsSpec, clip: float) -> float:
    """What the noise multiplier is scaled by to give a client's noise std: the release's L2
    sensitivity, or for random features that of the release divided by :func:`block_scales`."""
    if spec.random_features:
        return math.sqrt(len(RIDGE_BLOCKS))
    return sensitivity(clip, spec.second_moment)


@lru_cache(maxsize=8)
def feature_bound(seed: int, dim: int, size: int, clip: float) -> float:
    """The longest random-feature vector ``relu(x W)`` of a feature vector ``x`` clipped to
    ``clip``: ``||W||_2 clip`` (the projection's largest singular value)."""
    return float(np.linalg.norm(random_projection(seed, dim, size), 2)) * clip


def block_scales(spec: StatsSpec, clip: float, dim: int) -> dict[str, float]:
    """Each released block's noise in units of the std a client is told: for random
    features each block's own bound (counts 1, sums ``clip``, random-feature sums ``b``,
    the Gram ``b^2``); otherwise 1 for every block (one noise level, the whole release's)."""
    if not spec.random_features:
        return {}
    b = feature_bound(spec.projection_seed, dim, spec.random_features, clip)
    return {"counts": 1.0, "sums": clip, "rf_sums": b, "gram": b * b}


def epsilon_spent(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``releases`` Gaussian mechanisms of this noise multiplier."""
    import dp_accounting
    from dp_accounting import rdp

    if releases == 0:
        return 0.0
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier=noise_multiplier), count=releases)
    return float(accountant.get_epsilon(delta))


def calibrate(epsilon: float, delta: float, releases: int) -> float:
    """The smallest noise multiplier (to 0.1%) whose ``releases`` mechanisms spend at most ``epsilon``."""
    low, high = 1e-3, 1.0
    while epsilon_spent(high, releases, delta) > epsilon:
        low, high = high, high * 2
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        low, high = (middle, high) if epsilon_spent(middle, releases, delta) > epsilon else (low, middle)
    return high


def clip_rows(features: np.ndarray, clip: float) -> np.ndarray:
    """Each row scaled down to L2 norm ``clip`` if it is longer."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features * np.minimum(1.0, clip / np.maximum(norms, 1e-300))


def add_noise(stats: ClassStats, std: float, rng: np.random.Generator | None = None,
              scales: dict[str, float] | None = None) -> ClassStats:
    """``stats`` with Gaussian noise of standard deviation ``std`` (times the block's
    ``scales``, 1 where not given) on every count, sum, random-feature sum and entry of a
    shared matrix (which stays symmetric: each entry of its triangle once). A Gram's rank
    factor is dropped: the noisy Gram is full rank, and travels as its triangle."""
    rng = rng or np.random.default_rng()
    scales = scales or {}
    shared = {}
    for name, matrix in stats.shared.items():
        noise = np.triu(rng.normal(0.0, std * scales.get(name, 1.0), matrix.shape))
        shared[name] = matrix + noise + np.triu(noise, 1).T
    counts = stats.counts + rng.normal(0.0, std * scales.get("counts", 1.0), stats.counts.shape)
    sums = stats.sums + rng.normal(0.0, std * scales.get("sums", 1.0), stats.sums.shape)
    extra = {k: v + rng.normal(0.0, std * scales.get(k, 1.0), v.shape) for k, v in stats.extra.items()}
    return stats.replace(counts=counts, sums=sums, extra=extra, shared=shared)


def noise_other_slots(layout: Layout, held: np.ndarray, std: float, scales: dict[str, float] | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Under secure aggregation: noise for the class slots of ``layout`` that the client
    does not hold (counts, sums, random-feature sums; zeros everywhere else), to add to its
    vector. Each client adds ``1/t`` of the variance to every slot of the round, not only to
    its own classes: a class one client holds then still carries, in the round's sum, the
    noise of every reporting client, at least the variance the accountant assumes."""
    rng = rng or np.random.default_rng()
    scales = scales or {}
    others = ~np.isin(np.array(layout.classes, dtype=np.int64), held)
    out, k = [], len(layout.classes)
    for name, length in layout.parts():
        part = np.zeros(length)
        if name in ("counts", *PER_CLASS) and k:
            rows = part.reshape(k, -1)
            rows[others] = rng.normal(0.0, std * scales.get(name, 1.0), (int(others.sum()), rows.shape[1]))
        out.append(part)
    return np.concatenate(out) if out else np.zeros(0)


# A vocabulary class is in a noised site federation's model once its merged count is this many
# standard deviations of the count's noise (an absent class passes with probability 3e-5).
PRESENCE_STDS = 4.0


def present(stats: ClassStats, floor: float) -> ClassStats:
    """The classes whose (noisy) count is at least ``floor``: under privacy.dp every site
    noises every class of the vocabulary, so a class nobody holds has a count of noise
    alone; a model is built from the classes above it (post-processing: no privacy spent)."""
    keep = stats.counts >= floor
    if keep.all():
        return stats
    return stats.replace(ids=stats.ids[keep], counts=stats.counts[keep], sums=stats.sums[keep],
                         extra={k: v[keep] for k, v in stats.extra.items()})


def released(stats: ClassStats) -> ClassStats:
    """Post-processing of noisy statistics before a head is built (free under DP): counts
    below one sample are taken as one, and a Gram is shifted up by its most negative
    eigenvalue (a Gram is positive semi-definite; the noise is not), so that the ridge
    head's ``G + lambda I`` can be solved. That shift adds to the ridge's lambda about the
    noise's own spectral radius, which is what a ridge needs to stand on noisy data."""
    if not len(stats):
        return stats
    shared = dict(stats.shared)
    if "gram" in shared:
        shared["gram"] = _semi_definite(shared["gram"])
    return stats.replace(counts=np.maximum(stats.counts, 1.0), shared=shared)


def _semi_definite(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` plus its most negative eigenvalue (by a margin) times the identity."""
    n = len(matrix)
    if n <= 500:
        lowest = float(np.linalg.eigvalsh(matrix)[0])
    else:
        # Lanczos for the one eigenvalue (a 4,000-wide eigh takes minutes on 2 cores, Lanczos to
        # full precision ~10 s, to 1e-4 half a second); a fixed start: deterministic. Its value
        # lies at most ~1e-4 of itself above the true one: the margin below covers that.
        from scipy.sparse.linalg import eigsh

        lowest = float(eigsh(matrix, k=1, which="SA", v0=np.ones(n), tol=1e-4, return_eigenvectors=False)[0])
    if lowest >= 0:
        return matrix
    return matrix + (-lowest * (1 + 1e-3)) * np.eye(n)
