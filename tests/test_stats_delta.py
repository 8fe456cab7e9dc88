"""The statistics delta: a node that applies each round's delta, or one delta after missing
rounds, holds the server's merged statistics byte for byte; a malformed delta is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecon.learning.stats import ClassStats, StatsSpec, add_stats
from fedrecon.learning.stats_delta import Versions, apply_delta

DIM = 5
SPECS = {"ncm": StatsSpec(), "lda": StatsSpec(second_moment=True),
         "ridge": StatsSpec(random_features=12, projection_seed=3),
         "both": StatsSpec(second_moment=True, random_features=7, projection_seed=1)}


def assert_same(node: ClassStats, server: ClassStats) -> None:
    mine, theirs = node.to_arrays(), server.to_arrays()
    assert sorted(mine) == sorted(theirs)
    for k in theirs:
        assert mine[k].dtype == theirs[k].dtype and mine[k].shape == theirs[k].shape, k
        assert mine[k].tobytes() == theirs[k].tobytes(), k


def client_part(rng: np.random.Generator, classes: list[int], spec: StatsSpec) -> ClassStats:
    labels = np.repeat(classes, rng.integers(1, 4, size=len(classes)))
    return ClassStats.from_features(labels, rng.normal(size=(len(labels), DIM)), spec)


def merges(seed: int, rounds: int, spec: StatsSpec):
    """(round, merged statistics) of a random run: each round 0-3 clients send a few old or new classes."""
    rng = np.random.default_rng(seed)
    stats = ClassStats.empty(DIM)
    for r in range(1, rounds + 1):
        parts = [client_part(rng, sorted(rng.choice(30, size=rng.integers(1, 4), replace=False).tolist()), spec)
                 for _ in range(rng.integers(0, 4))]
        stats = add_stats([stats, *parts], DIM)
        yield r, stats


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 8), spec=st.sampled_from(list(SPECS)),
       every=st.integers(2, 4))
def test_nodes_following_the_deltas_hold_the_servers_statistics(seed, rounds, spec, every):
    # Prepare: one node that applies every round's delta, one that hears only every `every` rounds
    versions, before = Versions(), None
    held, late, late_version = None, None, 0
    for r, stats in merges(seed, rounds, SPECS[spec]):
        # Execute
        versions.update(before, stats, r)
        held = apply_delta(held, versions.delta(stats, r - 1), DIM)
        if r % every == 0 or r == rounds:
            late, late_version = apply_delta(late, versions.delta(stats, late_version), DIM), r
        before = stats
        # Assert
        assert_same(held, stats)
        assert_same(apply_delta(None, versions.delta(stats, 0), DIM), stats)
    assert late_version == rounds
    assert_same(late, stats)
    # the server's checkpoint of the versions gives the same deltas
    again = Versions.from_state(json.loads(json.dumps(versions.state())))
    for since in range(rounds + 1):
        a, b = versions.delta(stats, since), again.delta(stats, since)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_round_adding_two_classes_to_fifty_sends_two_rows():
    rng = np.random.default_rng(0)
    spec = SPECS["ncm"]
    versions = Versions()
    first = client_part(rng, list(range(50)), spec)
    versions.update(None, first, 1)
    second = add_stats([first, client_part(rng, [60, 61], spec)])
    versions.update(first, second, 2)
    delta = versions.delta(second, 1)
    assert delta["ids"].tolist() == [60, 61] and delta["sums"].shape == (2, DIM)
    sent, full = sum(v.nbytes for v in delta.values()), sum(v.nbytes for v in second.to_arrays().values())
    assert sent * 25 <= full + 1, (sent, full)  # 2 rows of 52
    assert_same(apply_delta(apply_delta(None, versions.delta(first, 0), DIM), delta, DIM), second)


def test_shared_arrays_travel_only_when_a_class_changed():
    rng = np.random.default_rng(1)
    spec = SPECS["both"]
    versions, stats = Versions(), client_part(rng, [1, 2], spec)
    versions.update(None, stats, 1)
    versions.update(stats, stats, 2)  # nobody sent anything in round 2
    quiet = versions.delta(stats, 1)
    assert len(quiet["ids"]) == 0 and "gram" not in quiet and "second_moment" not in quiet
    assert quiet["rf_sums"].shape == (0, 7)
    grown = add_stats([stats, client_part(rng, [2], spec)])
    versions.update(stats, grown, 3)
    delta = versions.delta(grown, 2)
    assert delta["ids"].tolist() == [2] and {"gram", "second_moment"} <= set(delta) and "gram_factor" not in delta
    assert_same(apply_delta(apply_delta(None, versions.delta(stats, 0), DIM), delta, DIM), grown)


def test_a_gram_factor_statistics_is_sent_as_its_full_gram():
    rng = np.random.default_rng(2)
    few = client_part(rng, [4], StatsSpec(random_features=40))  # 1-3 samples of 40 features: a factor
    assert few.gram_factor is not None
    versions = Versions()
    versions.update(None, few, 1)
    delta = versions.delta(few, 0)
    assert "gram_factor" not in delta and np.array_equal(apply_delta(None, delta, DIM).shared["gram"], few.shared["gram"])


def full_delta(spec: str = "both") -> dict[str, np.ndarray]:
    stats = client_part(np.random.default_rng(3), [1, 5, 9], SPECS[spec])
    versions = Versions()
    versions.update(None, stats, 1)
    return versions.delta(stats, 0)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(sums=d["sums"][:, :-1]), "sums has shape"),
    (lambda d: d.update(counts=d["counts"][:-1]), "counts has shape"),
    (lambda d: d.update(rf_sums=d["rf_sums"][:-1]), "rf_sums has shape"),
    (lambda d: d.update(second_moment=d["second_moment"][:-1]), "second_moment has shape"),
    (lambda d: d.update(gram=np.zeros(6)), "gram has shape"),
    (lambda d: d.update(counts=-d["counts"]), "counts must be positive"),
    (lambda d: d["sums"].__setitem__((0, 0), np.nan), "not finite"),
    (lambda d: d.update(ids=d["ids"][::-1].copy()), "strictly increasing"),
    (lambda d: d.update(ids=d["ids"].astype(float)), "vector of integers"),
    (lambda d: d.update(sums=d["sums"].astype(np.float32)), "float64"),
    (lambda d: d.update(gram_factor=np.ones((1, 7))), "unexpected array 'gram_factor'"),
    (lambda d: d.pop("counts"), "no 'counts'"),
    (lambda d: d.pop("gram"), "come together"),
])
def test_a_malformed_delta_is_refused_in_one_line(change, message):
    delta = {k: v.copy() for k, v in full_delta().items()}
    change(delta)
    with pytest.raises(ValueError, match=message) as caught:
        apply_delta(None, delta, DIM)
    assert "\n" not in str(caught.value)


def test_a_delta_of_another_kind_than_the_held_statistics_is_refused():
    held = apply_delta(None, full_delta("ncm"), DIM)
    with pytest.raises(ValueError, match="per-class arrays"):
        apply_delta(held, full_delta("ridge"), DIM)
    with pytest.raises(ValueError, match="sums has shape"):
        apply_delta(held, full_delta("ncm"), DIM + 1)


def test_the_server_refuses_what_a_delta_cannot_say():
    rng = np.random.default_rng(4)
    a = client_part(rng, [1, 2], SPECS["ncm"])
    versions = Versions()
    versions.update(None, a, 1)
    with pytest.raises(ValueError, match=r"dropped classes \[2\]"):
        versions.update(a, client_part(rng, [1], SPECS["ncm"]), 2)
    with pytest.raises(ValueError, match="no delta since round 2"):
        versions.delta(a, 2)
    with pytest.raises(ValueError, match="not a statistics versions state"):
        Versions.from_state({"rows": {}})
