"""Checks on a client's reply before it may touch the global statistics."""

from __future__ import annotations

import numpy as np

from fedrecon.plan import Arrival
from fedrecon.stats import ClassStats


class PayloadError(ValueError):
    """A client's reply is malformed or does not match the task it was given."""


def check_update(arrays: dict[str, np.ndarray], arrival: Arrival, dim: int) -> ClassStats:
    """Return the reply as :class:`ClassStats` if it is exactly what ``arrival`` allows."""
    missing = {"ids", "counts", "sums"} - set(arrays)
    if missing:
        raise PayloadError(f"missing arrays {sorted(missing)}")
    ids, counts, sums = arrays["ids"], arrays["counts"], arrays["sums"]
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise PayloadError(f"ids must be a 1-d integer array, got {ids.dtype} {ids.shape}")
    if counts.dtype != np.float64 or counts.shape != ids.shape:
        raise PayloadError(f"counts must be float64 {ids.shape}, got {counts.dtype} {counts.shape}")
    if sums.dtype != np.float64 or sums.shape != (len(ids), dim):
        raise PayloadError(f"sums must be float64 {(len(ids), dim)}, got {sums.dtype} {sums.shape}")
    if not (np.isfinite(counts).all() and np.isfinite(sums).all()):
        raise PayloadError("counts or sums hold NaN or inf")
    expected = dict(zip(arrival.classes, (len(s) for s in arrival.samples)))
    if sorted(ids.tolist()) != sorted(expected) or len(set(ids.tolist())) != len(ids):
        raise PayloadError(f"class ids {sorted(ids.tolist())} are not the task's classes {sorted(expected)}")
    for cid, count in zip(ids.tolist(), counts.tolist()):
        if count != expected[cid]:
            raise PayloadError(f"class {cid}: count {count} but the task gave {expected[cid]} samples")
    order = np.argsort(ids)
    return ClassStats(ids[order].astype(np.int64), counts[order], sums[order])
