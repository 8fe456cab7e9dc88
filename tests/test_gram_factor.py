"""The ridge head's Gram of few samples travels as its rank factor (ClassStats.gram_factor):
far fewer bytes, the same Gram to rounding, nothing the Gram does not tell, and a hostile
factor refused like a hostile triangle."""

from __future__ import annotations

import numpy as np
import pytest

from fedrecon.learning.heads import build_head, head_spec
from fedrecon.learning.stats import ClassStats, add_stats, gram_factor, random_features
from fedrecon.plan.records import Arrival
from strategies.validation import PayloadError, check_update
from tests.conftest import head_of

MERGE, SEED = head_of("ridge", 3, random_features=400, ridge_lambda=1.0)
SPEC = head_spec(MERGE, SEED)
DIM = 16


def client(seed: int, classes: tuple[int, ...], shots: int) -> tuple[Arrival, np.ndarray]:
    """An arrival of ``shots`` samples a class and its features."""
    labels = np.repeat(classes, shots)
    x = np.random.default_rng(seed).normal(size=(len(labels), DIM)) + labels[:, None] * 0.3
    samples = tuple(tuple(range(100 * c, 100 * c + shots)) for c in classes)
    return Arrival(1, seed, 0, classes, samples), x


def test_a_reply_of_few_samples_sends_the_factor_and_means_the_same_gram():
    arrival, x = client(0, (1, 2), 10)  # 20 samples, M = 400: the factor is 20 x 400, the triangle 80,200 values
    stats = ClassStats.from_features(arrival.sample_labels, x, SPEC)
    arrays = stats.to_arrays()
    assert "gram" not in arrays and arrays["gram_factor"].shape == (20, 400)
    got = check_update(arrays, arrival, DIM, SPEC).shared["gram"]
    exact = random_features(x, SPEC.projection_seed, 400)
    exact = exact.T @ exact
    assert np.abs(got - exact).max() <= 1e-12 * np.abs(exact).max()
    # many samples: the triangle, as before
    many, xm = client(1, (1, 2), 60)
    assert "gram" in ClassStats.from_features(many.sample_labels, xm, SPEC).to_arrays()


def test_the_factor_depends_on_the_gram_alone():
    # Two sets of features with the same Gram (rows mixed by an orthogonal matrix) send the same
    # factor: it tells the server what the Gram tells, and not the samples
    h = np.abs(np.random.default_rng(5).normal(size=(12, 50)))
    q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(12, 12)))
    a, b = gram_factor(h), gram_factor(q @ h)
    np.testing.assert_allclose(a, b, atol=1e-9)
    np.testing.assert_allclose(a.T @ a, h.T @ h, rtol=0, atol=1e-12 * (h.T @ h).max())


def test_merged_factors_build_the_ridge_head_one_site_builds():
    parts = [client(c, classes, shots) for c, (classes, shots) in enumerate([((1, 2), 8), ((2, 3), 5), ((4,), 12)])]
    replies = [check_update(ClassStats.from_features(a.sample_labels, x, SPEC).to_arrays(), a, DIM, SPEC) for a, x in parts]
    merged = add_stats(replies)
    labels = np.concatenate([a.sample_labels for a, _ in parts])
    x = np.concatenate([x for _, x in parts])
    pooled = ClassStats.from_features(labels, x, SPEC)  # 45 samples: the triangle
    np.testing.assert_array_equal(merged.counts, pooled.counts)
    np.testing.assert_allclose(merged.extra["rf_sums"], pooled.extra["rf_sums"], rtol=1e-12)
    top = np.abs(pooled.shared["gram"]).max()
    assert np.abs(merged.shared["gram"] - pooled.shared["gram"]).max() <= 1e-12 * top
    test = np.random.default_rng(9).normal(size=(200, DIM)) + np.repeat([1, 2, 3, 4], 50)[:, None] * 0.3
    ours, theirs = build_head(merged, MERGE, SEED), build_head(pooled, MERGE, SEED)
    np.testing.assert_array_equal(ours.predict(test), theirs.predict(test))
    np.testing.assert_allclose(ours.scores(test), theirs.scores(test), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("change, message", [
    (lambda f: np.vstack([f, f]), "rank of at most the reply's 20 samples"),
    (lambda f: f[:, :-1], "gram_factor must be float64 \\(rank, 400\\)"),
    (lambda f: f.astype(np.float32), "gram_factor must be float64"),
    (lambda f: np.where(np.arange(f.size).reshape(f.shape) == 7, np.nan, f), "gram_factor holds NaN"),
    (lambda f: np.vstack([f[:-1], np.where(np.arange(400) < 200, 5.0, -5.0)]), "negative entry"),
])
def test_a_hostile_factor_is_refused(change, message):
    arrival, x = client(0, (1, 2), 10)
    arrays = ClassStats.from_features(arrival.sample_labels, x, SPEC).to_arrays()
    with pytest.raises(PayloadError, match=message):
        check_update({**arrays, "gram_factor": change(arrays["gram_factor"])}, arrival, DIM, SPEC)


def test_a_reply_with_both_encodings_is_refused():
    arrival, x = client(0, (1, 2), 10)
    stats = ClassStats.from_features(arrival.sample_labels, x, SPEC)
    arrays = {**stats.to_arrays(), "gram": stats.replace(shared=dict(stats.shared)).to_arrays()["gram"]}
    with pytest.raises(PayloadError, match="gram and gram_factor both given"):
        check_update(arrays, arrival, DIM, SPEC)
