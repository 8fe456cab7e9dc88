"""Staleness of statistics computed under an older adapter: semantic drift compensation."""

from __future__ import annotations

import numpy as np

from fedrecon.learning.stats import ClassStats


def drift_sums(old: np.ndarray, new: np.ndarray, prototypes: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """SDC (Yu et al., 2020) as additive sums: for each old prototype ``p_k``, the
    Gaussian-weighted sum of the drifts ``new_i - old_i`` of current samples and the sum
    of the weights, ``w_ik = exp(-|old_i - p_k|^2 / (2 sigma^2))``. Clients' sums add;
    the drift estimate is their ratio (:func:`drift_from_sums`)."""
    d2 = ((old[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
    # no per-prototype rescaling (it would differ between clients and break the sums'
    # additivity): sigma must be on the features' scale
    w = np.exp(-d2 / (2 * sigma**2))
    return w.T @ (new - old), w.sum(0)


def drift_from_sums(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Drift of each prototype; zero where no current sample is near it."""
    out = np.zeros_like(sums)
    ok = weights > 1e-300
    out[ok] = sums[ok] / weights[ok, None]
    return out


def compensate(stats: ClassStats, drift: np.ndarray) -> ClassStats:
    """``stats`` with every class's features moved by its drift row (``ids`` order).

    Sums and the second moment move exactly as if each sample had moved by its
    class's drift; random-feature sums cannot be moved that way (a ValueError).
    """
    if "rf_sums" in stats.extra:
        raise ValueError("drift compensation cannot move random-feature statistics (ridge head)")
    sums = stats.sums + stats.counts[:, None] * drift
    shared = dict(stats.shared)
    if "second_moment" in shared:
        cross = stats.sums.T @ drift
        shared["second_moment"] = shared["second_moment"] + cross + cross.T + (stats.counts[:, None] * drift).T @ drift
    return stats.replace(sums=sums, shared=shared)
