"""The exact merge equals the centralized statistics, whatever the partition."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecon.learning.heads import NearestMean
from fedrecon.learning.prototype_merges import make_policy
from fedrecon.learning.stats import ClassStats, add_stats


@st.composite
def federations(draw):
    """Samples of a few classes dealt to clients in rounds; a class may come back."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_classes = draw(st.integers(1, 12))
    dim = draw(st.integers(1, 16))
    n = draw(st.integers(n_classes, 300))
    labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    # Features far from zero and of mixed scale stress the float64 accumulation.
    features = rng.normal(loc=50.0, scale=rng.uniform(0.1, 100.0), size=(n, dim))
    clients = draw(st.integers(1, 8))
    rounds = draw(st.integers(1, 6))
    # Each sample goes to a random (round, client): a class split over several
    # clients or rounds is a revisit, by the same or another client.
    where = rng.integers(0, rounds * clients, size=n)
    chunks = [np.flatnonzero(where == k) for k in range(rounds * clients)]
    order = [rng.permutation(clients) for _ in range(rounds)]
    return labels, features, chunks, order, clients


@settings(max_examples=200, deadline=None)
@given(federations())
def test_exact_merge_equals_centralized(fed):
    labels, features, chunks, order, clients = fed
    central = ClassStats.from_features(labels, features)
    policy = make_policy("exact")
    merged = ClassStats.empty(features.shape[1])
    for r, clients_in_order in enumerate(order):
        updates = []
        for c in clients_in_order:
            idx = chunks[r * clients + c]
            if len(idx):
                updates.append(ClassStats.from_features(labels[idx], features[idx]))
        merged = policy.merge(merged, updates)

    np.testing.assert_array_equal(merged.ids, central.ids)
    np.testing.assert_array_equal(merged.counts, central.counts)
    np.testing.assert_allclose(merged.means(), central.means(), rtol=1e-6, atol=1e-9)
    probe = features[: min(len(features), 50)]
    np.testing.assert_array_equal(NearestMean(merged).predict(probe), NearestMean(central).predict(probe))


def test_merge_does_not_modify_its_inputs():
    a = ClassStats.from_features(np.array([0, 1]), np.ones((2, 3)))
    b = ClassStats.from_features(np.array([1, 2]), 2 * np.ones((2, 3)))
    before = [x.copy() for x in (a.counts, a.sums, b.counts, b.sums)]
    merged = add_stats([a, b])
    assert merged.ids.tolist() == [0, 1, 2]
    assert merged.counts.tolist() == [1, 2, 1]
    for old, new in zip(before, (a.counts, a.sums, b.counts, b.sums)):
        np.testing.assert_array_equal(old, new)


def test_revisit_is_weighted_by_all_its_samples():
    # Client learns class 7 from 1 sample (value 0), later again from 3 samples (value 4):
    # the mean of all 4 samples is 3, not the average of the two visits (2).
    first = ClassStats.from_features(np.array([7]), np.array([[0.0]]))
    later = ClassStats.from_features(np.array([7, 7, 7]), np.full((3, 1), 4.0))
    merged = make_policy("exact").merge(make_policy("exact").merge(ClassStats.empty(1), [first]), [later])
    assert merged.means()[0, 0] == 3.0


def test_unknown_policy_lists_the_allowed_names():
    try:
        make_policy("avg")
    except ValueError as exc:
        assert "exact" in str(exc) and "avg" in str(exc)
    else:
        raise AssertionError("unknown policy accepted")


def test_cosine_and_euclidean_heads_pick_nearest():
    stats = ClassStats(np.array([3, 9]), np.array([1.0, 1.0]), np.array([[1.0, 0.0], [0.0, 10.0]]))
    x = np.array([[0.9, 0.1], [0.2, 8.0], [5.0, 4.0]])
    assert NearestMean(stats, "euclidean").predict(x).tolist() == [3, 9, 3]
    assert NearestMean(stats, "cosine").predict(x).tolist() == [3, 9, 3]
    assert NearestMean(stats, "cosine").predict(np.array([[2.0, 4.0]])).tolist() == [9]
    assert NearestMean(stats, "euclidean").predict(np.array([[2.0, 4.0]])).tolist() == [3]
