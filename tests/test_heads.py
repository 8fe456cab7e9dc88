"""Every head built from federated statistics equals the head fitted on the pooled data."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedrecon.learning.heads import HEADS, NearestMean, build_head, fit_head, head_spec
from fedrecon.learning.prototype_merges import make_policy
from fedrecon.learning.stats import ClassStats, add_stats, pack_symmetric, unpack_symmetric
from fedrecon.scenario.sections import HEADS as HEAD_NAMES
from tests.conftest import head_of
from tests.test_stats import federations

SETTINGS = {
    "ncm": head_of("ncm"),
    "ncm-cosine": head_of("ncm", metric="cosine"),
    "lda": head_of("lda", shrinkage=0.1),
    "lda-no-shrinkage": head_of("lda", shrinkage=0.0),
    "ridge": head_of("ridge", random_features=48, ridge_lambda=1.0, seed=3),
}


def federated(labels, features, chunks, order, clients, head: tuple) -> ClassStats:
    """Replay the federation: each round's clients in their order, exact merge."""
    policy, spec = make_policy("exact"), head_spec(*head)
    merged = ClassStats.empty(features.shape[1])
    for r, clients_in_order in enumerate(order):
        updates = [ClassStats.from_features(labels[idx], features[idx], spec)
                   for c in clients_in_order if len(idx := chunks[r * clients + c])]
        merged = policy.merge(merged, updates)
    return merged


@pytest.mark.parametrize("name", sorted(SETTINGS))
@settings(max_examples=40, deadline=None)
@given(fed=federations(), probe_seed=st.integers(0, 2**16))
def test_federated_head_equals_pooled_head(name, fed, probe_seed):
    labels, features, chunks, order, clients = fed
    head = SETTINGS[name]
    if head[0].head == "lda" and head[0].shrinkage == 0:
        # Without shrinkage the covariance must be estimable: more spare samples than dimensions.
        assume(len(labels) - len(np.unique(labels)) > 2 * features.shape[1])
    # Centre the features a little: LDA's within-class scatter from the uncentred second
    # moment loses digits in proportion to |mean|^2 / variance (documented in stats.py).
    features = features - 45.0
    pooled = fit_head(labels, features, *head)
    merged = build_head(federated(labels, features, chunks, order, clients, head), *head)
    probe = np.random.default_rng(probe_seed).normal(5.0, 10.0, size=(40, features.shape[1]))
    expected, got = pooled.scores(probe), merged.scores(probe)
    np.testing.assert_array_equal(merged.ids, pooled.ids)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-6 * scale


def _direct_lda_scores(labels, features, probe, shrinkage):
    """LDA from centred within-class scatter, no second moments involved."""
    ids = np.unique(labels)
    means = np.stack([features[labels == c].mean(0) for c in ids])
    centred = features - means[np.searchsorted(ids, labels)]
    cov = centred.T @ centred / (len(labels) - len(ids))
    d = features.shape[1]
    shrunk = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    w = np.linalg.inv(shrunk) @ means.T
    return probe @ w - 0.5 * np.sum(means.T * w, axis=0)


def test_lda_matches_a_direct_computation_from_centred_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 400)
    features = rng.normal(size=(400, 10)) + rng.normal(scale=3, size=(6, 10))[labels]
    probe = rng.normal(size=(50, 10))
    head = fit_head(labels, features, *head_of("lda", shrinkage=0.25))
    np.testing.assert_allclose(head.scores(probe), _direct_lda_scores(labels, features, probe, 0.25), rtol=1e-9, atol=1e-9)


def test_ridge_matches_a_direct_solve_on_random_features():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    features = rng.normal(size=(200, 6))
    head = fit_head(labels, features, *head_of("ridge", random_features=30, ridge_lambda=2.0, seed=7))
    from fedrecon.learning.stats import random_features

    h = random_features(features, 7, 30)
    onehot = (labels[:, None] == np.arange(4)).astype(float)
    b = np.linalg.solve(h.T @ h + 2.0 * np.eye(30), h.T @ onehot)
    probe = rng.normal(size=(20, 6))
    np.testing.assert_allclose(head.scores(probe), random_features(probe, 7, 30) @ b, rtol=1e-9, atol=1e-12)


def test_second_order_heads_beat_ncm_on_correlated_classes():
    # Two classes whose means differ along a low-variance direction of a strongly
    # correlated noise: euclidean NCM is fooled, LDA and ridge are not.
    rng = np.random.default_rng(2)
    mix = np.array([[10.0, 0.0], [9.5, 0.6]])
    labels = np.repeat([0, 1], 500)
    features = rng.normal(size=(1000, 2)) @ mix + np.array([[0.0, 0.0], [0.0, 1.0]])[labels]
    accuracy = {name: float((fit_head(labels, features, *s).predict(features) == labels).mean())
                for name, s in [("ncm", head_of("ncm")), ("lda", head_of("lda", shrinkage=0.0)),
                                ("ridge", head_of("ridge", random_features=200, ridge_lambda=1.0))]}
    assert accuracy["lda"] > accuracy["ncm"] + 0.2
    assert accuracy["ridge"] > accuracy["ncm"] + 0.1


def test_head_without_its_statistics_is_refused():
    stats = ClassStats.from_features(np.array([0, 1]), np.eye(2))
    with pytest.raises(ValueError, match="second_moment"):
        build_head(stats, *head_of("lda"))
    with pytest.raises(ValueError, match="gram"):
        build_head(stats, *head_of("ridge"))
    with pytest.raises(ValueError, match="'ncm', 'lda' or 'ridge'"):
        head_of("svm")  # the schema refuses it
    assert sorted(HEADS) == sorted(HEAD_NAMES) == ["lda", "ncm", "ridge"]


def test_symmetric_matrices_travel_as_upper_triangles():
    a = np.random.default_rng(3).normal(size=(5, 5))
    a = a + a.T
    packed = pack_symmetric(a)
    assert packed.shape == (15,)
    np.testing.assert_array_equal(unpack_symmetric(packed), a)
    with pytest.raises(ValueError, match="upper triangle"):
        unpack_symmetric(np.zeros(14))


def test_statistics_round_trip_through_arrays():
    rng = np.random.default_rng(4)
    spec = head_spec(*head_of("ridge", random_features=16))
    stats = ClassStats.from_features(rng.integers(0, 3, 30), rng.normal(size=(30, 4)), spec)
    back = ClassStats.from_arrays(stats.to_arrays())
    np.testing.assert_array_equal(back.shared["gram"], stats.shared["gram"])
    np.testing.assert_array_equal(back.extra["rf_sums"], stats.extra["rf_sums"])
    assert stats.to_arrays()["gram"].nbytes == 16 * 17 // 2 * 8


def test_adding_statistics_of_different_kinds_is_refused():
    a = ClassStats.from_features(np.array([0]), np.ones((1, 2)))
    b = ClassStats.from_features(np.array([1]), np.ones((1, 2)), head_spec(*head_of("lda")))
    with pytest.raises(ValueError, match="different kinds"):
        add_stats([a, b])


def test_nearest_mean_kept_its_interface():
    stats = ClassStats(np.array([3, 9]), np.array([1.0, 1.0]), np.array([[1.0, 0.0], [0.0, 10.0]]))
    assert NearestMean(stats, "cosine").predict(np.array([[2.0, 4.0]])).tolist() == [9]
