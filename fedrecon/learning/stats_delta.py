"""What changed in the merged statistics since a round: the server's side (:class:`Versions`)
and a node's (:func:`apply_delta`).

A site node keeps the merged classifier between rounds. Sending the head itself would send
every row each round; the statistics change only in the rows of the classes some client
sent, and in the shared matrices. So the server sends those rows and matrices (a *delta*)
and the node builds the head with the same :func:`fedrecon.learning.heads.build_head`.

The delta carries the server's values, not differences: the node replaces its rows with
them, so its statistics are the server's bit for bit (no sum of differences to round), and
a node that missed rounds catches up with one delta from the round it holds. Rows are never
removed: the merges only add, and :meth:`Versions.update` refuses a merge that drops one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrecon.learning.stats import PER_CLASS, SHARED, ClassStats, pack_symmetric, triangle_side, unpack_symmetric

_ROWS = ("ids", "counts", *PER_CLASS)


def _equal(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], key: str) -> bool:
    return key in a and key in b and a[key].shape == b[key].shape and np.array_equal(a[key], b[key])


class Versions:
    """Which round last changed each class row and the shared arrays of the merged
    statistics (server side; checkpointed with :meth:`state`)."""

    def __init__(self):
        self.rows: dict[int, int] = {}  # class id -> round that last changed its row
        self.shared: dict[str, int] = {}  # shared array's name -> round that last changed it
        self.latest = 0  # the last round update was given

    def update(self, before: ClassStats | None, after: ClassStats, server_round: int) -> None:
        """Mark rows whose count or any per-class array differs (or that are new), and the
        shared arrays if they differ. ``before``: the statistics the last delta described
        (None: none yet)."""
        if server_round < self.latest:
            raise ValueError(f"round {server_round} comes before round {self.latest}, which already changed the statistics")
        before = before if before is not None else ClassStats.empty(after.dim)
        gone = np.setdiff1d(before.ids, after.ids)
        if len(gone):
            raise ValueError(f"the merge dropped classes {gone.tolist()}; a delta only adds or replaces rows")
        old, new = before.per_class(), after.per_class()
        where = dict(zip(before.ids.tolist(), range(len(before.ids))))
        for i, c in enumerate(after.ids.tolist()):
            j = where.get(c)
            same = j is not None and set(old) == set(new) and before.counts[j] == after.counts[i] and all(
                old[k].shape[1:] == new[k].shape[1:] and np.array_equal(old[k][j], new[k][i]) for k in new)
            if not same:
                self.rows[c] = server_round
        for k in after.shared:
            if not _equal(before.shared, after.shared, k):
                self.shared[k] = server_round
        self.latest = server_round

    def delta(self, stats: ClassStats, since: int) -> dict[str, np.ndarray]:
        """What changed after round ``since`` (0: everything), as
        :meth:`ClassStats.to_arrays`-style arrays: ids, counts, sums and extras of the changed
        rows only; shared arrays (packed upper triangles) only if they changed after ``since``.
        Never a ``gram_factor``: the full packed Gram, the very values the server holds.
        A row or shared array this object never saw counts as changed."""
        if not 0 <= since <= self.latest:
            raise ValueError(f"no delta since round {since}: the statistics are at round {self.latest}")
        newer = np.array([self.rows.get(c, self.latest + 1) > since for c in stats.ids.tolist()], dtype=bool)
        out = {"ids": stats.ids[newer], "counts": stats.counts[newer]}
        out.update({k: v[newer] for k, v in stats.per_class().items()})
        out.update({k: pack_symmetric(v) for k, v in stats.shared.items() if self.shared.get(k, self.latest + 1) > since})
        return out

    def state(self) -> dict:
        """JSON-able: ``{"latest": round, "rows": {"id": round}, "shared": {name: round}}``."""
        return {"latest": self.latest, "rows": {str(c): r for c, r in self.rows.items()}, "shared": dict(self.shared)}

    @classmethod
    def from_state(cls, d: Mapping) -> "Versions":
        out = cls()
        try:
            out.latest = int(d["latest"])
            out.rows = {int(c): int(r) for c, r in d["rows"].items()}
            out.shared = {str(k): int(r) for k, r in d["shared"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a statistics versions state ({type(exc).__name__}: {exc})") from None
        return out


def _checked(delta: Mapping[str, np.ndarray], dim: int, noisy: bool = False) -> dict[str, np.ndarray]:
    """The delta's arrays, each checked alone and against the others (ValueError, one line)."""
    known = {*_ROWS, *SHARED}
    unknown = sorted(set(delta) - known)
    if unknown:
        raise ValueError(f"statistics delta: unexpected array {unknown[0]!r} (known: {', '.join(sorted(known))})")
    missing = [k for k in ("ids", "counts", "sums") if k not in delta]
    if missing:
        raise ValueError(f"statistics delta: no {missing[0]!r} array")
    arrays = {k: np.asarray(v) for k, v in delta.items()}
    ids = arrays["ids"]
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"statistics delta: ids must be a vector of integers, got {ids.dtype} of shape {ids.shape}")
    if len(ids) and (ids[0] < 0 or np.any(np.diff(ids) <= 0)):
        raise ValueError("statistics delta: ids must be non-negative and strictly increasing")
    for k, v in arrays.items():
        if k != "ids" and v.dtype != np.float64:
            raise ValueError(f"statistics delta: {k} must be float64, got {v.dtype}")
        if k != "ids" and not np.isfinite(v).all():
            raise ValueError(f"statistics delta: {k} holds values that are not finite")
    n = len(ids)
    expected = {"counts": (n,), "sums": (n, dim)}
    if "rf_sums" in arrays:
        expected["rf_sums"] = (n, arrays["rf_sums"].shape[-1] if arrays["rf_sums"].ndim == 2 else -1)
    for k, shape in expected.items():
        if arrays[k].shape != shape:
            raise ValueError(f"statistics delta: {k} has shape {arrays[k].shape}, expected {shape}")
    if np.any(arrays["counts"] <= 0) and not noisy:  # (privacy.dp: a noisy count may be anything)
        raise ValueError("statistics delta: counts must be positive")
    sides = {"second_moment": dim}
    if "rf_sums" in arrays:
        sides["gram"] = arrays["rf_sums"].shape[1]
    for k in SHARED:
        if k in arrays:
            side = triangle_side(len(arrays[k])) if arrays[k].ndim == 1 else None
            if side is None or (k in sides and side != sides[k]):
                raise ValueError(f"statistics delta: {k} has shape {arrays[k].shape}, not the packed upper triangle of "
                                 f"a {sides.get(k, '?')} x {sides.get(k, '?')} matrix")
    return arrays


def apply_delta(held: ClassStats | None, delta: Mapping[str, np.ndarray], dim: int, noisy: bool = False) -> ClassStats:
    """The node's statistics after ``delta``: changed rows replaced (not added: they are the
    server's values), new rows inserted in id order, shared arrays replaced when sent.

    Checks the delta (the arrays of a ClassStats, shapes consistent with ``dim`` and with
    what ``held`` holds, counts positive, finite float64 values) and raises ValueError with
    one line otherwise. ``held`` is not changed.
    """
    arrays = _checked(delta, dim, noisy)
    held = held if held is not None else ClassStats.empty(dim)
    if held.dim != dim:
        raise ValueError(f"statistics delta: the held statistics have {held.dim} features, the delta {dim}")
    rows = {k: arrays[k] for k in PER_CLASS if k in arrays}
    if len(held) and set(rows) != set(held.per_class()):
        raise ValueError(f"statistics delta: per-class arrays {sorted(rows)}, the held statistics have "
                         f"{sorted(held.per_class())}")
    sent = {k: unpack_symmetric(arrays[k]) for k in SHARED if k in arrays}
    if held.shared and not set(sent) <= set(held.shared):
        raise ValueError(f"statistics delta: shared arrays {sorted(sent)}, the held statistics have {sorted(held.shared)}")
    shared = {**held.shared, **sent}
    for k, v in shared.items():
        if k == "gram" and "rf_sums" in rows and v.shape[0] != rows["rf_sums"].shape[1]:
            raise ValueError(f"statistics delta: rf_sums has {rows['rf_sums'].shape[1]} columns, the Gram is "
                             f"{v.shape[0]} x {v.shape[0]}")
    if ("gram" in shared) != ("rf_sums" in rows) and len(held) + len(arrays["ids"]):
        raise ValueError("statistics delta: rf_sums and gram come together (random-feature statistics)")
    ids = np.union1d(held.ids, arrays["ids"]).astype(np.int64)
    mine, theirs = np.searchsorted(ids, held.ids), np.searchsorted(ids, arrays["ids"])
    merged = {}
    for k in ("counts", *rows):
        old = held.counts if k == "counts" else held.per_class().get(k)
        out = np.empty((len(ids), *arrays[k].shape[1:]))
        if old is not None:
            out[mine] = old
        out[theirs] = arrays[k]
        merged[k] = out
    counts, sums = merged.pop("counts"), merged.pop("sums")
    return ClassStats(ids, counts, sums, merged, shared)
