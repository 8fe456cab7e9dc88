"""Differential privacy of the released statistics: calibration against the accountant,
the noise clients add, the epsilon a run reports, and a budget that stops a run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrecon import dp
from fedrecon.learning.stats import ClassStats, StatsSpec
from tests.conftest import small_scenario
from tests.test_run import ending, run
from tests.test_strategy import identity  # noqa: F401 (fixture)

pytest.importorskip("dp_accounting")


def accountant_epsilon(multiplier: float, releases: int, delta: float) -> float:
    """The accountant's own answer, called directly."""
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    for _ in range(releases):
        accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier=multiplier))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("epsilon, releases", [(1.0, 2), (4.0, 10), (16.0, 5)])
def test_calibration_spends_the_budget_and_no_more(epsilon, releases):
    multiplier = dp.calibrate(epsilon, 1e-5, releases)
    spent = accountant_epsilon(multiplier, releases, 1e-5)
    assert epsilon * 0.99 <= spent <= epsilon
    assert accountant_epsilon(multiplier * 0.99, releases, 1e-5) > spent  # less noise spends more


def test_clipping_and_noise_are_what_they_say():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * 3
    clipped = dp.clip_rows(x, 1.5)
    assert np.linalg.norm(clipped, axis=1).max() <= 1.5 + 1e-12
    short = x[np.linalg.norm(x, axis=1) <= 1.5]
    np.testing.assert_array_equal(dp.clip_rows(short, 1.5), short)
    stats = ClassStats.from_features(rng.integers(0, 4, 500), clipped, StatsSpec(second_moment=True))
    noisy = [dp.add_noise(stats, 2.0, np.random.default_rng(k)) for k in range(400)]
    deltas = np.stack([n.sums - stats.sums for n in noisy])
    assert abs(deltas.std() - 2.0) < 0.05 and abs(deltas.mean()) < 0.05
    moment = noisy[0].shared["second_moment"]
    np.testing.assert_array_equal(moment, moment.T)  # symmetric: each entry of the triangle noised once
    assert dp.sensitivity(1.5, True) == pytest.approx(math.sqrt(1 + 1.5**2 + 1.5**4))


def test_a_run_reports_the_accountants_epsilon_and_noises_its_statistics(write_scenario, tmp_path):
    base = small_scenario()
    run(write_scenario(base, "plain.yaml"), tmp_path / "plain")
    summary = run(write_scenario({**base, "privacy": {"dp": {"epsilon": 8.0, "clip": 20.0}}}), tmp_path / "dp")
    assert summary["releases"] == 2 and summary["privacy_delta"] == 1e-5
    assert summary["privacy_epsilon"] == pytest.approx(accountant_epsilon(summary["noise_multiplier"], 2, 1e-5), rel=1e-6)
    assert summary["privacy_epsilon"] <= 8.0
    noisy, plain = ending(tmp_path / "dp")["stats"], ending(tmp_path / "plain")["stats"]
    np.testing.assert_array_equal(noisy["ids"], plain["ids"])
    assert np.abs(noisy["sums"] - plain["sums"]).max() > 0.1 and np.abs(noisy["counts"] - plain["counts"]).max() > 0.1


def test_a_round_past_the_budget_is_not_run(write_scenario, tmp_path):
    # the budget is calibrated for the plan's 2 rounds; a task that fails in round 2 would need a third
    from tests.inprocess import InProcessGrid
    from tests.test_integrity import run_on

    faults = {"retries": 2, "inject": [{"client": 0, "round": 2, "kind": "raise"}]}
    path = write_scenario(small_scenario(privacy={"dp": {"epsilon": 4.0, "clip": 20.0}}, faults=faults))
    summary, job = run_on(InProcessGrid(3), path, tmp_path / "dp")
    assert summary["releases"] == 2 and summary["privacy_epsilon"] <= 4.0 and summary["lost_tasks"] == 1
    refused = [f for f in job.state.failures if "privacy budget spent" in f["reason"]]
    assert [f["round"] for f in refused] == [3, 4] and summary["failures"] == 3


def test_under_secure_aggregation_each_client_adds_its_share_of_the_noise(write_scenario, tmp_path):
    summary = run(write_scenario(small_scenario(privacy={"secure_aggregation": True, "dp": {"epsilon": 8.0, "clip": 20.0}})),
                  tmp_path / "both")
    assert summary["failures"] == 0 and summary["releases"] == 2 and summary["classes_learned"] == 12


def test_clients_score_noisy_statistics_as_the_server_would(write_scenario, tmp_path):
    """evaluation.where clients under privacy.dp: each client post-processes the noisy merged
    statistics before building its head (fedrecon.dp.released), so the clients' summed counts
    are the server's scoring of the same statistics."""
    from fedrecon.learning.evaluate import Evaluator
    from fedrecon.scenario import load_scenario
    from server.prepare import prepare

    # the ridge head on a noisy Gram: unsolvable unless shifted (released), so the clients must post-process
    path = write_scenario(small_scenario(privacy={"dp": {"epsilon": 8.0, "clip": 20.0}}, evaluation={"where": "clients"},
                                         unknown={"quantile": None},
                                         merge={"prototypes": "exact", "head": "ridge", "random_features": 200}))
    summary = run(path, tmp_path / "dp")
    prep = prepare(load_scenario(path))
    noisy = ending(tmp_path / "dp")["stats"]
    evaluator = Evaluator(prep.dataset, prep.model, prep.plan, prep.scenario, "cpu", noisy=True)
    seen = prep.plan.classes_seen(prep.plan.rounds)
    assert summary["final_accuracy"] == pytest.approx(evaluator.accuracy(ClassStats.from_arrays(noisy), seen), abs=1e-12)
