"""Differential privacy of the released class statistics: clipping, Gaussian noise, accounting.

A sample's feature vector is clipped to L2 norm ``clip``; it then adds 1 to its class's
count, at most ``clip`` (in L2) to its class's sum and, for the ``lda`` head, at most
``clip^2`` (in Frobenius norm, on the upper triangle that travels) to the second moment:
the release's L2 sensitivity to one sample is ``sqrt(1 + clip^2 [+ clip^4])``. Every
released count, sum and second-moment entry gets Gaussian noise of standard deviation
``noise_multiplier * sensitivity``; under secure aggregation each of at least ``t``
summed clients adds its ``1 / t`` of the variance, so the round's sum carries at least the
noise the accountant assumes.

Each round that releases statistics is one Gaussian mechanism; the rounds compose (RDP,
``dp_accounting``), conservatively as if a person could contribute to every round: the
noise multiplier is calibrated so that the planned rounds spend exactly the target epsilon
at the target delta, and a round that would spend more is not run. The unit of privacy is a
sample (a drawing, a sentence).
"""

from __future__ import annotations

import math

import numpy as np

from fedrecon.learning.stats import ClassStats


def sensitivity(clip: float, second_moment: bool) -> float:
    return math.sqrt(1.0 + clip**2 + (clip**4 if second_moment else 0.0))


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


def add_noise(stats: ClassStats, std: float, rng: np.random.Generator | None = None) -> ClassStats:
    """``stats`` with Gaussian noise of standard deviation ``std`` on every count, sum and
    second-moment entry (the matrix stays symmetric: each entry of its triangle once)."""
    rng = rng or np.random.default_rng()
    shared = {}
    for name, matrix in stats.shared.items():
        noise = np.triu(rng.normal(0.0, std, matrix.shape))
        shared[name] = matrix + noise + np.triu(noise, 1).T
    return stats.replace(counts=stats.counts + rng.normal(0.0, std, stats.counts.shape),
                         sums=stats.sums + rng.normal(0.0, std, stats.sums.shape), shared=shared)


def released(stats: ClassStats) -> ClassStats:
    """Post-processing of noisy statistics before a head is built (free under DP): counts
    below one sample are taken as one."""
    return stats.replace(counts=np.maximum(stats.counts, 1.0)) if len(stats) else stats
