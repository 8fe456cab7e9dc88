"""The ridge head under privacy.dp: the random features' bound, each block noised in
proportion to its own bound, the release's sensitivity the accountant is told, the server's
checks of noisy second-order arrays and the post-processing that lets the head be solved."""

from __future__ import annotations

import numpy as np
import pytest

from fedrecon import dp
from fedrecon.learning.heads import build_head
from fedrecon.learning.stats import ClassStats, StatsSpec, random_features
from fedrecon.plan.records import Arrival
from strategies.validation import PayloadError, check_update
from tests.conftest import scenario_of, small_scenario
from tests.test_run import ending, run
from tests.test_strategy import identity  # noqa: F401 (fixture: the run id Flower's messages need)

pytest.importorskip("dp_accounting")

SPEC = StatsSpec(random_features=48, projection_seed=3)
DIM, CLIP = 6, 1.5


def clipped(rng, n):
    return dp.clip_rows(rng.normal(size=(n, DIM)) * 3, CLIP)


def test_a_clipped_sample_s_random_features_are_within_the_bound():
    x = clipped(np.random.default_rng(0), 2000)
    longest = np.linalg.norm(random_features(x, SPEC.projection_seed, SPEC.random_features), axis=1).max()
    assert longest <= dp.feature_bound(SPEC.projection_seed, DIM, SPEC.random_features, CLIP)


def test_one_sample_changes_the_scaled_release_by_at_most_the_sensitivity_the_accountant_is_told():
    rng = np.random.default_rng(1)
    scales = dp.block_scales(SPEC, CLIP, DIM)
    assert set(scales) == set(dp.RIDGE_BLOCKS)
    worst = 0.0
    for k in range(50):
        x, labels = clipped(rng, 20), rng.integers(0, 3, 20)
        labels[:3] = [0, 1, 2]  # the neighbour keeps every class
        one = ClassStats.from_features(labels, x, SPEC)
        other = ClassStats.from_features(labels[1:], x[1:], SPEC)  # the first sample left out
        change = [(one.counts - other.counts) / scales["counts"], (one.sums - other.sums) / scales["sums"],
                  (one.extra["rf_sums"] - other.extra["rf_sums"]) / scales["rf_sums"],
                  # the Gram's triangle is what travels and is noised
                  (one.shared["gram"] - other.shared["gram"])[np.triu_indices(SPEC.random_features)] / scales["gram"]]
        worst = max(worst, float(np.sqrt(sum((c**2).sum() for c in change))))
    assert worst <= dp.release_sensitivity(SPEC, CLIP)


def test_each_block_gets_noise_in_proportion_to_its_bound():
    rng = np.random.default_rng(2)
    stats = ClassStats.from_features(rng.integers(0, 40, 400), clipped(rng, 400), SPEC)
    scales = dp.block_scales(SPEC, CLIP, DIM)
    noisy = dp.add_noise(stats, 0.5, np.random.default_rng(3), scales)
    assert noisy.gram_factor is None
    for name, before, after in [("counts", stats.counts, noisy.counts), ("sums", stats.sums, noisy.sums),
                                ("rf_sums", stats.extra["rf_sums"], noisy.extra["rf_sums"]),
                                ("gram", stats.shared["gram"], noisy.shared["gram"])]:
        assert np.std(after - before) == pytest.approx(0.5 * scales[name], rel=0.15), name
    np.testing.assert_array_equal(noisy.shared["gram"], noisy.shared["gram"].T)


def test_the_server_takes_a_noisy_ridge_reply_and_solves_its_head():
    rng = np.random.default_rng(4)
    labels = np.repeat([5, 9], 4)
    stats = ClassStats.from_features(labels, clipped(rng, 8), SPEC)
    noisy = dp.add_noise(stats, 1.0, np.random.default_rng(5), dp.block_scales(SPEC, CLIP, DIM))
    arrival = Arrival(1, 0, 0, (5, 9), ((0, 1, 2, 3), (4, 5, 6, 7)))
    arrays = noisy.to_arrays()
    assert (arrays["rf_sums"] < 0).any() and (arrays["gram"] < 0).any()
    with pytest.raises(PayloadError):
        check_update(arrays, arrival, DIM, SPEC)  # without DP these are no sums of ReLU features
    checked = check_update(arrays, arrival, DIM, SPEC, noisy=True)
    with pytest.raises(PayloadError, match="triangle"):
        check_update(stats.to_arrays(), arrival, DIM, SPEC, noisy=True)  # a factor is no noisy Gram
    assert np.linalg.eigvalsh(checked.shared["gram"])[0] < -1.0  # indefinite, as the noise made it
    post = dp.released(checked)
    assert np.linalg.eigvalsh(post.shared["gram"])[0] >= -1e-6 * np.abs(post.shared["gram"]).max()
    merge = scenario_of(merge={"head": "ridge", "random_features": 48, "ridge_lambda": 1e-3}).merge
    assert set(build_head(post, merge, 3).predict(rng.normal(size=(5, DIM)))) <= {5, 9}


def test_a_ridge_run_under_dp_spends_its_budget_and_noises_every_block(write_scenario, tmp_path):
    merge = {"prototypes": "exact", "head": "ridge", "random_features": 64}
    run(write_scenario(small_scenario(merge=merge), "plain.yaml"), tmp_path / "plain")
    summary = run(write_scenario(small_scenario(merge=merge, privacy={"dp": {"epsilon": 8.0, "clip": 20.0}})),
                  tmp_path / "dp")
    assert summary["releases"] == 2 and summary["privacy_epsilon"] <= 8.0 and summary["classes_learned"] == 12
    assert summary["noise_std"] == pytest.approx(summary["noise_multiplier"] * 2, rel=1e-5)  # sqrt(4 blocks)
    assert summary["final_accuracy"] is not None
    noisy, plain = ending(tmp_path / "dp")["stats"], ending(tmp_path / "plain")["stats"]
    for name in ("counts", "sums", "rf_sums"):
        assert np.abs(noisy[name] - plain[name]).max() > 0.1, name
    assert "gram" in noisy and "gram_factor" not in noisy


def test_under_secure_aggregation_a_client_noises_the_other_classes_slots_too():
    from fedrecon.secagg.layout import Layout

    layout = Layout((1, 4, 7), DIM, random_features=SPEC.random_features)
    noise = dp.noise_other_slots(layout, np.array([4]), 2.0, {"sums": 3.0}, np.random.default_rng(6))
    parts, start = {}, 0
    for name, length in layout.parts():
        parts[name] = noise[start:start + length]
        start += length
    counts, sums, rf = parts["counts"], parts["sums"].reshape(3, DIM), parts["rf_sums"].reshape(3, -1)
    assert counts[1] == 0 and not sums[1].any() and not rf[1].any() and not parts["gram"].any()  # its own: noised already
    assert counts[0] != 0 and counts[2] != 0 and sums[[0, 2]].all() and rf[[0, 2]].all()
    assert np.std(rf[[0, 2]]) == pytest.approx(2.0, rel=0.2) and np.std(sums[[0, 2]]) > 3.0
