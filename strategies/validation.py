"""Checks on a client's reply before it may touch the global statistics."""

from __future__ import annotations

import numpy as np

from flwr.app import ArrayRecord, Message

from fedrecon import protocol as P
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
    if (counts <= 0).any():
        raise PayloadError("counts must be positive (a sum with a zero or negative count is no class statistic)")
    expected = dict(zip(arrival.classes, (len(s) for s in arrival.samples)))
    if sorted(ids.tolist()) != sorted(expected) or len(set(ids.tolist())) != len(ids):
        raise PayloadError(f"class ids {sorted(ids.tolist())} are not the task's classes {sorted(expected)}")
    for cid, count in zip(ids.tolist(), counts.tolist()):
        if count != expected[cid]:
            raise PayloadError(f"class {cid}: count {count} but the task gave {expected[cid]} samples")
    order = np.argsort(ids)
    return ClassStats(ids[order].astype(np.int64), counts[order], sums[order])


def decode_reply(reply: Message, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of a train reply, refused unread when it is an error or too large."""
    if reply.has_error():
        raise PayloadError(f"client error {reply.error.code}: {reply.error.reason}")
    record = reply.content.get(P.STATS) if P.STATS in reply.content else None
    if not isinstance(record, ArrayRecord):
        raise PayloadError(f"no ArrayRecord {P.STATS!r} in the reply")
    size = sum(len(a.data) for a in record.values())
    if size > max_bytes:
        raise PayloadError(f"{size} bytes of arrays, more than the {max_bytes} allowed (faults.max_reply_bytes)")
    try:
        return {k: v.numpy() for k, v in record.items()}
    except Exception as exc:  # a malformed Array: any decoding error means garbage
        raise PayloadError(f"arrays cannot be decoded: {exc}") from None
