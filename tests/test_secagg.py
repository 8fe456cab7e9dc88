"""Secure aggregation without Flower: the ring, Shamir's shares, the layout and the
protocol; the securely summed statistics equal the plain ones."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecon.learning.stats import ClassStats, StatsSpec, add_stats
from fedrecon.secagg import shamir
from fedrecon.secagg.layout import Layout
from fedrecon.secagg.protocol import ClientRound, NotEnough, ServerRound
from fedrecon.secagg.ring import Ring128, decode, encode, stream


def test_the_ring_encodes_floats_exactly_and_sums_them_exactly():
    rng = np.random.default_rng(0)
    for scale in (1e-9, 1e-3, 1.0, 1e6, 1e15):
        x = rng.normal(size=5000) * scale
        back = decode(encode(x))
        assert np.abs(back - x).max() <= 2.0**-65 * 1.01
        big = np.abs(x) >= 2.0**-11  # no bit below 2^-64: exact
        assert np.array_equal(back[big], x[big])
    parts = [rng.normal(size=2000) * s for s in (1e-6, 1.0, 1e3, 1e9, 1e15)]
    total = sum((encode(p) for p in parts[1:]), encode(parts[0]))
    assert np.array_equal(decode(total), [math.fsum(v) for v in zip(*parts)])  # the exact sum, rounded once
    with pytest.raises(ValueError, match="2\\^62"):
        encode(np.array([2.0**62]))
    m = stream(os.urandom(32), 100)
    assert np.array_equal(decode(encode(parts[1][:100]) + m - m), parts[1][:100])
    back = Ring128.from_bytes(encode(parts[1]).to_bytes())  # as it travels
    assert np.array_equal(back.hi, encode(parts[1]).hi) and np.array_equal(back.lo, encode(parts[1]).lo)


def test_shamir_any_threshold_of_shares_and_no_fewer():
    secret = os.urandom(32)
    holders = list(range(7))
    shares = shamir.split(secret, 4, holders)
    for chosen in ([0, 1, 2, 3], [6, 4, 2, 0], [1, 3, 5, 6, 2]):
        assert shamir.combine({h: shares[h] for h in chosen}) == secret
    with pytest.raises(ValueError, match="do not combine"):
        shamir.combine({h: shares[h] for h in [0, 1, 2]})


def federation(draw_seed: int, clients: int, spec: StatsSpec):
    rng = np.random.default_rng(draw_seed)
    parts = {}
    for c in range(clients):
        labels = rng.integers(0, 8, size=rng.integers(1, 12))
        parts[c] = ClassStats.from_features(labels, rng.normal(3.0, 2.0, size=(len(labels), 5)), spec)
    return parts


def secure_sum(parts: dict[int, ClassStats], layout: Layout, threshold: int, drop: set[int] = frozenset(),
               quiet: set[int] = frozenset()) -> tuple[dict, list[int]]:
    """The protocol end to end in memory: ``drop`` share keys and then send no masked
    input; ``quiet`` send theirs but reveal no shares."""
    clients = {c: ClientRound.start(c, 3) for c in parts}
    server = ServerRound(3, threshold)
    server.keys = {c: cl.public() for c, cl in clients.items()}
    relayed = server.relay({c: cl.share(server.keys, threshold) for c, cl in clients.items()})
    for v, ciphertexts in relayed.items():
        clients[v] = ClientRound.from_state(clients[v].state())  # kept in the node's context between messages
        clients[v].receive(ciphertexts)
    for c in server.shared:
        if c not in drop:
            server.masked[c] = clients[c].mask(layout.vector(parts[c]), server.shared)
    survivors = sorted(server.masked)
    dropped = [c for c in server.shared if c not in server.masked]
    reveals = {w: clients[w].reveal(survivors, dropped) for w in survivors if w not in quiet}
    arrays, _, _ = layout.read(decode(server.unmask(reveals, layout.size())))
    return arrays, survivors


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), clients=st.integers(2, 7), head=st.sampled_from(["ncm", "lda", "ridge"]),
       drops=st.integers(0, 2))
def test_securely_summed_statistics_equal_the_plain_ones(seed, clients, head, drops):
    spec = {"ncm": StatsSpec(), "lda": StatsSpec(second_moment=True), "ridge": StatsSpec(random_features=6)}[head]
    parts = federation(seed, clients, spec)
    layout = Layout(tuple(range(8)), 5, spec.second_moment, spec.random_features)
    threshold = max(2, math.ceil(clients / 2))
    drop = set(range(min(drops, clients - threshold)))  # those who vanish after sharing their keys
    arrays, survivors = secure_sum(parts, layout, threshold, drop)
    plain = add_stats([parts[c] for c in survivors]).to_arrays()
    assert arrays.keys() == plain.keys()
    np.testing.assert_array_equal(arrays["ids"], plain["ids"])
    np.testing.assert_array_equal(arrays["counts"], plain["counts"])
    for key in plain:
        scale = max(np.abs(plain[key]).max(), 1.0)
        assert np.abs(arrays[key] - plain[key]).max() <= 1e-12 * scale, key


def test_a_single_masked_vector_says_nothing_of_its_input():
    # long enough (64 classes of 32 features: 2,112 numbers) that a chance correlation stays
    # near 1/sqrt(2112) = 0.02, far below the bound, so the test fails only if the mask leaks
    rng = np.random.default_rng(1)
    parts = {}
    for c in range(4):
        labels = np.arange(64).repeat(3)
        parts[c] = ClassStats.from_features(labels, rng.normal(3.0, 2.0, size=(len(labels), 32)), StatsSpec())
    layout = Layout(tuple(range(64)), 32)
    clients = {c: ClientRound.start(c, 1) for c in parts}
    keys = {c: cl.public() for c, cl in clients.items()}
    for cl in clients.values():
        cl.share(keys, 3)
    x = layout.vector(parts[0])
    masked = decode(clients[0].mask(x, sorted(parts)))
    # uniform over the ring: about 2^62 in magnitude, no sign of the input's scale or shape
    assert np.median(np.abs(masked)) > 2.0**60
    assert abs(np.corrcoef(masked, x)[0, 1]) < 0.15
    # the same input masked in another round looks as unrelated
    again = {c: ClientRound.start(c, 2) for c in parts}
    keys = {c: cl.public() for c, cl in again.items()}
    for cl in again.values():
        cl.share(keys, 3)
    assert abs(np.corrcoef(decode(again[0].mask(x, sorted(parts))), masked)[0, 1]) < 0.15


def test_too_few_survivors_or_revealers_reveal_nothing():
    parts = federation(2, 5, StatsSpec())
    layout = Layout(tuple(range(8)), 5)
    with pytest.raises(NotEnough, match="masked input"):
        secure_sum(parts, layout, 4, drop={0, 1})
    with pytest.raises(NotEnough, match="revealed their shares"):
        secure_sum(parts, layout, 4, quiet={2, 3})
    # a client never reveals both shares of one client
    cl = ClientRound.start(0, 1)
    with pytest.raises(ValueError, match="both"):
        cl.reveal([1], [1])


def test_the_layout_reads_back_what_a_client_wrote_and_refuses_classes_without_a_slot():
    spec = StatsSpec(second_moment=True, random_features=3)
    stats = ClassStats.from_features(np.array([2, 5, 5]), np.arange(12.0).reshape(3, 4), spec)
    layout = Layout((1, 2, 5), 4, True, 3, (("conv.B", (2, 2)),))
    arrays, factors, weight = layout.read(layout.vector(stats, {"conv.B": np.ones((2, 2))}, 3.0))
    assert arrays["ids"].tolist() == [2, 5] and weight == 3.0 and factors["conv.B"].tolist() == [[3.0, 3.0], [3.0, 3.0]]
    for key, value in stats.to_arrays().items():
        np.testing.assert_array_equal(arrays[key], value)
    assert Layout.from_json(layout.to_json()) == layout
    with pytest.raises(ValueError, match="no slot"):
        Layout((1,), 4, True, 3).vector(stats)


def test_a_share_tampered_with_in_transit_is_refused():
    from cryptography.exceptions import InvalidTag

    clients = {c: ClientRound.start(c, 5) for c in range(3)}
    keys = {c: cl.public() for c, cl in clients.items()}
    sent = clients[0].share(keys, 2)
    clients[1].share(keys, 2)
    spoiled = bytearray(sent[1])
    spoiled[-1] ^= 1
    with pytest.raises(InvalidTag):
        clients[1].receive({0: bytes(spoiled)})
    clients[1].receive({0: sent[1]})  # the untouched one is taken
    assert 0 in clients[1].held
