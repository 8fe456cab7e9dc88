"""Shamir's secret sharing over the prime field of p = 2^521 - 1.

Written here rather than taken from pycryptodome (which Flower's SecAgg+ uses): its
``Shamir.combine`` works on 16-byte blocks and recomputes the Lagrange weights for every
secret, O(t^2) field products in Python each time. The server here reconstructs every
survivor's seed from the same t holders in a round, so it computes the weights once
(:func:`lagrange_at_zero`) and each secret is then t products. A 32-byte secret (a mask
seed or an X25519 private key) is one field element.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

P = 2**521 - 1  # a Mersenne prime, far above any 32-byte secret
SECRET_BYTES = 32


def split(secret: bytes, threshold: int, holders: list[int]) -> dict[int, int]:
    """Shares of ``secret`` for each holder id (the share's x is id + 1); any ``threshold``
    of them give the secret back, fewer give nothing."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} with {len(holders)} holders")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(P) for _ in range(threshold - 1)]
    shares = {}
    for holder in holders:
        x, y = holder + 1, 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % P
        shares[holder] = y
    return shares


def lagrange_at_zero(holders: list[int]) -> dict[int, int]:
    """The weights that turn these holders' shares into the secret (the polynomial at 0)."""
    xs = [h + 1 for h in holders]
    weights = {}
    for h, xi in zip(holders, xs):
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num = num * (-xj) % P
                den = den * (xi - xj) % P
        weights[h] = num * pow(den, P - 2, P) % P
    return weights


def combine(shares: Mapping[int, int], weights: Mapping[int, int] | None = None) -> bytes:
    """The secret from at least ``threshold`` shares (holder id -> share)."""
    weights = weights or lagrange_at_zero(sorted(shares))
    value = sum(weights[h] * y for h, y in shares.items()) % P
    if value >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares do not combine to a secret (too few, or tampered)")
    return value.to_bytes(SECRET_BYTES, "big")


def share_bytes(y: int) -> bytes:
    return y.to_bytes(66, "big")


def share_from_bytes(data: bytes) -> int:
    return int.from_bytes(data, "big")
