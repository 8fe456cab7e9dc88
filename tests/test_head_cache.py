"""The server scores with the head it last built while the statistics stay the same, and
answers only the test samples it has not answered: the same accuracies, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fedrecon.learning.head_cache import HeadCache, stats_digest
from fedrecon.learning.heads import build_head, head_spec
from fedrecon.learning.stats import ClassStats, add_stats
from tests.conftest import scenario_of


def blobs(rng, classes, per_class, dim=8):
    centres = rng.normal(size=(max(classes) + 1, dim)) * 2
    labels = np.repeat(classes, per_class)
    return labels, centres[labels] + rng.normal(size=(len(labels), dim))


@pytest.mark.parametrize("head", ["ncm", "lda", "ridge"])
def test_cached_answers_equal_fresh_ones_and_the_head_is_built_only_when_the_statistics_change(head):
    # Prepare
    rng = np.random.default_rng(0)
    merge = scenario_of(merge={"head": head, **({"random_features": 64} if head == "ridge" else {})}).merge
    spec = head_spec(merge, 1)
    first = ClassStats.from_features(*blobs(rng, [0, 1, 2], 6), spec)
    test_labels, test_features = blobs(np.random.default_rng(1), [0, 1, 2, 3], 5)
    features = {c: test_features[test_labels == c] for c in range(4)}
    cache = HeadCache(lambda s: build_head(s, merge, 1))

    def fresh(stats, classes):
        h = build_head(stats, merge, 1)
        return [h.predict(features[c]) for c in classes]

    # Execute / Assert: a round learns classes 0-2, then one learns nothing but the plan sees class 3
    for got, want in zip(cache.answers(first, features, [0, 1, 2]), fresh(first, [0, 1, 2])):
        np.testing.assert_array_equal(got, want)
    same = add_stats([first])  # a merge of nothing new: equal arrays, other objects
    assert same is not first and same.sums is not first.sums
    for got, want in zip(cache.answers(same, features, [0, 1, 2, 3]), fresh(first, [0, 1, 2, 3])):
        np.testing.assert_array_equal(got, want)
    assert cache.builds == 1
    # a round that learns (class 3 now, and more of class 0) builds again and answers every sample
    more = add_stats([first, ClassStats.from_features(*blobs(rng, [0, 3], 4), spec)])
    for got, want in zip(cache.answers(more, features, [0, 1, 2, 3]), fresh(more, [0, 1, 2, 3])):
        np.testing.assert_array_equal(got, want)
    assert cache.builds == 2


def test_the_same_statistics_object_is_known_without_reading_its_arrays(monkeypatch):
    from fedrecon.learning import head_cache

    rng = np.random.default_rng(3)
    merge = scenario_of(merge={"head": "ncm"}).merge
    stats = ClassStats.from_features(*blobs(rng, [0, 1], 4))
    features = {0: rng.normal(size=(3, 8)), 1: rng.normal(size=(2, 8))}
    cache = HeadCache(lambda s: build_head(s, merge, 1))
    cache.answers(stats, features, [0, 1])
    monkeypatch.setattr(head_cache, "stats_digest", lambda s: pytest.fail("digested the same object"))
    cache.answers(stats, features, [0, 1])
    assert cache.builds == 1


def test_a_change_in_any_array_changes_the_digest():
    rng = np.random.default_rng(2)
    stats = ClassStats.from_features(*blobs(rng, [0, 1], 4), head_spec(scenario_of(merge={"head": "lda"}).merge, 1))
    moment = stats.shared["second_moment"].copy()
    moment[3, 5] = np.nextafter(moment[3, 5], np.inf)
    assert stats_digest(stats) == stats_digest(stats.replace())
    assert stats_digest(stats) != stats_digest(stats.replace(shared={"second_moment": moment}))
    sums = stats.sums.copy()
    sums[1, 0] = np.nextafter(sums[1, 0], np.inf)
    assert stats_digest(stats) != stats_digest(stats.replace(sums=sums))
