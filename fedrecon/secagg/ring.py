"""Exact fixed point in the integers mod 2^128, and masks from a stream cipher.

A float64 ``x`` with ``|x| < 2^62`` becomes the integer nearest ``x * 2^64``: exactly
``x * 2^64`` when no bit of ``x`` lies below 2^-64 (integers, counts, and every value of
magnitude 2^-11 or more), else within 2^-65 of it (an absolute error below 2.8e-20). For
``a = |x|``, ``hi = floor(a)`` and the fraction ``a - hi`` are exact in float64 (Sterbenz:
``hi >= a / 2`` once ``a >= 1``); a negative value is negated in the ring, exactly. Sums
mod 2^128 are exact while the true sum stays below 2^62 in magnitude, so a masked and
unmasked sum decodes to the clients' sum with no error but those 2^-65 roundings and the
final conversion to float64: closer to the exact sum than adding the float64 values in
any order. Statistics are sums of float32 features, far below the bound (``encode``
refuses a value at or beyond it).

Numpy has no 128-bit integers: a value is two uint64 arrays and addition carries by hand.
Masks are a ChaCha20 keystream (``cryptography``) keyed by the full 32-byte shared secret,
16 bytes per value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOUND = 2.0**62
_TWO64 = 2.0**64


@dataclass(frozen=True)
class Ring128:
    """Integers mod 2^128, elementwise: ``hi * 2^64 + lo``."""

    hi: np.ndarray
    lo: np.ndarray

    def __len__(self) -> int:
        return len(self.lo)

    def __add__(self, other: "Ring128") -> "Ring128":
        lo = self.lo + other.lo  # uint64 wraps mod 2^64
        return Ring128(self.hi + other.hi + (lo < self.lo).astype(np.uint64), lo)

    def __sub__(self, other: "Ring128") -> "Ring128":
        lo = self.lo - other.lo
        return Ring128(self.hi - other.hi - (self.lo < other.lo).astype(np.uint64), lo)

    def __neg__(self) -> "Ring128":
        return Ring128.zeros(len(self)) - self

    @classmethod
    def zeros(cls, n: int) -> "Ring128":
        return cls(np.zeros(n, np.uint64), np.zeros(n, np.uint64))

    def to_bytes(self) -> bytes:
        return np.stack([self.hi, self.lo], 1).astype("<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Ring128":
        pairs = np.frombuffer(data, dtype="<u8").reshape(-1, 2).astype(np.uint64)
        return cls(pairs[:, 0].copy(), pairs[:, 1].copy())


def encode(x: np.ndarray) -> Ring128:
    """``x * 2^64`` mod 2^128, exactly; a value at or beyond 2^62 in magnitude is refused."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if len(x) and not (np.isfinite(x).all() and np.abs(x).max() < BOUND):
        raise ValueError(f"values must be finite and below 2^62 in magnitude to be summed exactly (max {np.abs(x).max()})")
    a = np.abs(x)
    hi = np.floor(a)
    magnitude = Ring128(hi.astype(np.uint64), np.rint((a - hi) * _TWO64).astype(np.uint64))
    negative = -magnitude
    return Ring128(np.where(x < 0, negative.hi, magnitude.hi), np.where(x < 0, negative.lo, magnitude.lo))


def decode(r: Ring128) -> np.ndarray:
    """Each (two's complement) value divided by 2^64, as float64: exact for what ``encode``
    made, within an ulp or two of the exact value for a sum."""
    negative = r.hi.view(np.int64) < 0
    magnitude = -r
    hi = np.where(negative, magnitude.hi, r.hi).astype(np.float64)
    lo = np.where(negative, magnitude.lo, r.lo).astype(np.float64) / _TWO64
    return np.where(negative, -(hi + lo), hi + lo)


def stream(key: bytes, n: int) -> Ring128:
    """``n`` uniformly random values of the ring from the ChaCha20 keystream of ``key`` (32 bytes)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    if len(key) != 32:
        raise ValueError("a mask key is 32 bytes")
    data = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(16 * n))
    return Ring128.from_bytes(data)
