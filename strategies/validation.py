"""Checks on a client's reply before it may touch the global statistics."""

from __future__ import annotations

import numpy as np

from flwr.app import ArrayRecord, Message

from fedrecon import protocol as P
from fedrecon.learning.finetune_model import BIAS, IDS, WEIGHT, grow_head
from fedrecon.learning.stats import ClassStats, StatsSpec, gram_of, triangle_side, unpack_symmetric
from fedrecon.plan.records import Arrival


class PayloadError(ValueError):
    """A client's reply is malformed or does not match the task it was given."""


def check_update(arrays: dict[str, np.ndarray], arrival: Arrival, dim: int, spec: StatsSpec | None = None,
                 noisy: bool = False) -> ClassStats:
    """Return the reply as :class:`ClassStats` if it is exactly what ``arrival`` allows
    (and, under ``spec``, carries exactly the second-order arrays the head needs).
    ``noisy`` (differential privacy): counts and second-order arrays carry noise, so only
    their form is checked, not their values."""
    spec = spec or StatsSpec()
    names = set(arrays)
    if "gram_factor" in names and spec.random_features:  # the Gram of few samples, as its rank factor
        if "gram" in names:
            raise PayloadError("gram and gram_factor both given: a reply sends the Gram one way")
        names = names - {"gram_factor"} | {"gram"}
    missing = ({"ids", "counts", "sums"} | spec.keys()) - names
    if missing:
        raise PayloadError(f"missing arrays {sorted(missing)}")
    unexpected = names - {"ids", "counts", "sums"} - spec.keys()
    if unexpected:
        raise PayloadError(f"unexpected arrays {sorted(unexpected)}")
    ids, counts, sums = arrays["ids"], arrays["counts"], arrays["sums"]
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise PayloadError(f"ids must be a 1-d integer array, got {ids.dtype} {ids.shape}")
    if counts.dtype != np.float64 or counts.shape != ids.shape:
        raise PayloadError(f"counts must be float64 {ids.shape}, got {counts.dtype} {counts.shape}")
    if sums.dtype != np.float64 or sums.shape != (len(ids), dim):
        raise PayloadError(f"sums must be float64 {(len(ids), dim)}, got {sums.dtype} {sums.shape}")
    if not (np.isfinite(counts).all() and np.isfinite(sums).all()):
        raise PayloadError("counts or sums hold NaN or inf")
    if (counts <= 0).any() and not noisy:
        raise PayloadError("counts must be positive (a sum with a zero or negative count is no class statistic)")
    expected = dict(zip(arrival.classes, (len(s) for s in arrival.samples)))
    if sorted(ids.tolist()) != sorted(expected) or len(set(ids.tolist())) != len(ids):
        raise PayloadError(f"class ids {sorted(ids.tolist())} are not the task's classes {sorted(expected)}")
    for cid, count in zip(ids.tolist(), counts.tolist()):
        if count != expected[cid] and not noisy:
            raise PayloadError(f"class {cid}: count {count} but the task gave {expected[cid]} samples")
    order = np.argsort(ids)
    extra, shared = check_second_order(arrays, ids, np.maximum(counts, 1.0) if noisy else counts, sums, dim, spec, noisy)
    return ClassStats(ids[order].astype(np.int64), counts[order], sums[order],
                      {k: v[order] for k, v in extra.items()}, shared)


def reply_limit(arrival: Arrival, dim: int, spec: StatsSpec) -> int:
    """Twice the bytes of arrays a valid reply to ``arrival`` holds, plus 1 MB of slack."""
    k, m = len(arrival.classes), spec.random_features
    values = k * (2 + dim + m) + (dim * (dim + 1) // 2 if spec.second_moment else 0) + m * (m + 1) // 2
    return 2 * 8 * values + 1_000_000


def decode_reply(reply: Message, max_bytes: int, name: str = P.STATS) -> dict[str, np.ndarray]:
    """The arrays of a train reply's record ``name``, refused unread when the reply is
    an error or too large."""
    if reply.has_error():
        raise PayloadError(f"client error {reply.error.code}: {reply.error.reason}")
    record = reply.content.get(name) if name in reply.content else None
    if not isinstance(record, ArrayRecord):
        raise PayloadError(f"no ArrayRecord {name!r} in the reply")
    size = sum(len(a.data) for a in record.values())
    if size > max_bytes:
        raise PayloadError(f"{size} bytes of arrays, more than the {max_bytes} allowed (faults.max_reply_bytes)")
    try:
        return {k: v.numpy() for k, v in record.items()}
    except Exception as exc:  # a malformed Array: any decoding error means garbage
        raise PayloadError(f"arrays cannot be decoded: {exc}") from None


def _same_keys(what: str, arrays: dict, expected: set[str]) -> None:
    """Refuse ``arrays`` unless it holds exactly the ``expected`` names (a few of each difference named)."""
    if set(arrays) != expected:
        missing, unexpected = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise PayloadError(f"{what}: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                           f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")


def check_adapter_update(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]], rank: int,
                         factors: str) -> dict[str, np.ndarray] | None:
    """A reply's adapter factors, checked: None when empty (the client did not train),
    else exactly ``<layer>.<f>`` for every adapted layer and every ``f`` in ``factors``,
    float32, ``A`` of shape (rank, fan_in), ``B`` (out, rank), finite."""
    if not arrays:
        return None
    _same_keys("adapter update", arrays, {f"{n}.{f}" for n in shapes for f in factors})
    for key, v in arrays.items():
        out, fan_in = shapes[key[:-2]]
        shape = (rank, fan_in) if key.endswith(".A") else (out, rank)
        if v.dtype != np.float32 or v.shape != shape:
            raise PayloadError(f"adapter update {key} must be float32 {shape}, got {v.dtype} {v.shape}")
        if not np.isfinite(v).all():
            raise PayloadError(f"adapter update {key} holds NaN or inf")
    return arrays


def check_drift(arrays: dict[str, np.ndarray], prototypes: int, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Drift sums of a reply (staleness ``compensate``): None when empty, else float64
    ``sums`` (prototypes, dim) and non-negative ``weights`` (prototypes,), finite."""
    if not arrays:
        return None
    if set(arrays) != {"sums", "weights"}:
        raise PayloadError(f"drift must hold exactly sums and weights, got {sorted(arrays)}")
    sums, weights = arrays["sums"], arrays["weights"]
    if sums.dtype != np.float64 or sums.shape != (prototypes, dim) or weights.dtype != np.float64 or weights.shape != (prototypes,):
        raise PayloadError(f"drift sums must be float64 {(prototypes, dim)} and weights {(prototypes,)}, "
                           f"got {sums.dtype} {sums.shape} and {weights.dtype} {weights.shape}")
    if not (np.isfinite(sums).all() and np.isfinite(weights).all()) or (weights < 0).any():
        raise PayloadError("drift holds NaN, inf or a negative weight")
    return sums, weights


def _triangle(arrays: dict, name: str, side: int, noisy: bool = False) -> np.ndarray:
    """A packed symmetric matrix (upper triangle): float64, finite, of the right side, diagonal >= 0
    (unless noise may have made it negative)."""
    v = arrays[name]
    if v.dtype != np.float64 or v.ndim != 1 or triangle_side(len(v)) != side:
        raise PayloadError(f"{name} must be the float64 upper triangle of a {side}x{side} matrix "
                           f"({side * (side + 1) // 2} values), got {v.dtype} {v.shape}")
    if not np.isfinite(v).all():
        raise PayloadError(f"{name} holds NaN or inf")
    full = unpack_symmetric(v)  # symmetric by construction: only one triangle travels
    if (np.diag(full) < 0).any() and not noisy:
        raise PayloadError(f"{name} has a negative diagonal entry (a sum of squares)")
    return full


def _factor_gram(v: np.ndarray, side: int, samples: float) -> np.ndarray:
    """The Gram of a rank factor (``ClassStats.gram_factor``): float64, finite, ``side``
    columns and no more rows than the reply has samples (a Gram's rank)."""
    if v.dtype != np.float64 or v.ndim != 2 or v.shape[1] != side or v.shape[0] > samples:
        raise PayloadError(f"gram_factor must be float64 (rank, {side}) with a rank of at most the reply's "
                           f"{samples:.0f} samples, got {v.dtype} {v.shape}")
    if not np.isfinite(v).all():
        raise PayloadError("gram_factor holds NaN or inf")
    return gram_of(v)


def _tolerance(x: float) -> float:
    return 1e-9 * max(abs(x), 1.0)


def check_second_order(arrays: dict, ids: np.ndarray, counts: np.ndarray, sums: np.ndarray, dim: int,
                       spec: StatsSpec, noisy: bool = False) -> tuple[dict, dict]:
    """The second-order arrays of a reply, checked; nothing global is touched.

    Besides shapes, dtypes and finiteness: a second moment must be at least the
    between-class part its own sums imply (its within-class scatter has a
    non-negative trace), and random ReLU features are non-negative, so their sums
    and Gram entries are too, with ``tr(G) >= sum_c |s_c|^2 / n_c``.
    """
    extra, shared = {}, {}
    between = float(np.sum(sums**2 / counts[:, None])) if len(ids) else 0.0
    if spec.second_moment:
        moment = _triangle(arrays, "second_moment", dim, noisy)
        if np.trace(moment) < between - _tolerance(between) and not noisy:
            raise PayloadError("second_moment is smaller than the class means imply (negative within-class scatter)")
        shared["second_moment"] = moment
    if spec.random_features:
        m = spec.random_features
        rf = arrays["rf_sums"]
        if rf.dtype != np.float64 or rf.shape != (len(ids), m):
            raise PayloadError(f"rf_sums must be float64 {(len(ids), m)}, got {rf.dtype} {rf.shape}")
        if not np.isfinite(rf).all():
            raise PayloadError("rf_sums must be finite")
        if (rf < 0).any() and not noisy:
            raise PayloadError("rf_sums must be non-negative (sums of ReLU features)")
        if "gram_factor" in arrays:
            if noisy:  # noise makes the Gram full rank and indefinite: it has no factor to send
                raise PayloadError("gram_factor under privacy.dp: a noisy Gram travels as its triangle")
            gram, slack = _factor_gram(arrays["gram_factor"], m, float(counts.sum())), 1e-10
        else:
            gram, slack = _triangle(arrays, "gram", m, noisy), 0.0
        # values are checked only without noise (under privacy.dp, as for the second moment: the form)
        # from a factor, an entry that is 0 comes back as a rounding error either side of it
        if (gram < -slack * max(float(np.diag(gram).max(initial=0.0)), 1.0)).any() and not noisy:
            raise PayloadError("gram has a negative entry (ReLU features are non-negative)")
        implied = float(np.sum(rf**2 / counts[:, None]))
        if np.trace(gram) < implied - _tolerance(implied) and not noisy:
            raise PayloadError("gram's trace is smaller than its rf_sums imply")
        extra["rf_sums"], shared["gram"] = rf, gram
    return extra, shared


def check_model_update(arrays: dict[str, np.ndarray], current: dict[str, np.ndarray], arrival: Arrival) -> dict[str, np.ndarray]:
    """A fedavg_finetune reply, checked against the global model it started from: the
    same backbone entries (shape, dtype, finite), and a head whose rows are exactly the
    global classes plus the task's, sorted, float32 and finite."""
    _same_keys("model update", arrays, set(current))
    expected_ids = grow_head(current, arrival.classes)[IDS]
    ids = arrays[IDS]
    if ids.dtype.kind not in "iu" or not np.array_equal(ids, expected_ids):
        raise PayloadError(f"model update: head rows {ids.tolist()[:8]}... are not the global classes and the task's, sorted")
    dim = current[WEIGHT].shape[1]
    shapes = {WEIGHT: ((len(ids), dim), np.float32), BIAS: ((len(ids),), np.float32)}
    for key, v in arrays.items():
        if key == IDS:
            continue
        shape, dtype = shapes.get(key, (current[key].shape, current[key].dtype))
        if v.shape != shape or v.dtype != dtype:
            raise PayloadError(f"model update {key} must be {np.dtype(dtype)} {shape}, got {v.dtype} {v.shape}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise PayloadError(f"model update {key} holds NaN or inf")
    return arrays


def model_reply_limit(current: dict[str, np.ndarray], arrival: Arrival) -> int:
    """Twice the bytes of a valid fedavg_finetune reply to ``arrival``, plus 1 MB."""
    rows = len(arrival.classes) * (current[WEIGHT].shape[1] + 2) * 8
    return 2 * (sum(v.nbytes for v in current.values()) + rows) + 1_000_000


def drift_reply_limit(prototypes: int, dim: int) -> int:
    """Twice the bytes of valid drift sums (``staleness: compensate``), plus 1 MB."""
    return 2 * 8 * prototypes * (dim + 1) + 1_000_000


def adapter_reply_limit(shapes: dict[str, tuple[int, int]], rank: int, factors: str) -> int:
    """Twice the bytes of the float32 factors a valid adapter update holds, plus 1 MB."""
    values = sum(rank * fan_in * ("A" in factors) + out * rank * ("B" in factors) for out, fan_in in shapes.values())
    return 2 * 4 * values + 1_000_000
