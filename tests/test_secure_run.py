"""Secure aggregation in a whole run (the real ClientApp on an in-process grid): the same
statistics and accuracy as the plain run; a client that drops mid-aggregation loses no
task; too few survivors reveal nothing; what cannot be summed is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedrecon import protocol as P
from fedrecon.scenario import ScenarioError, parse_scenario
from tests.conftest import small_scenario
from tests.test_run import STAGGERED, ending, run
from tests.test_strategy import identity  # noqa: F401 (fixture)

SYNC = small_scenario()["tasks"]  # 3 clients a round, 2 rounds


def same_statistics(a, b) -> None:
    assert a["stats"].keys() == b["stats"].keys()
    np.testing.assert_array_equal(a["stats"]["ids"], b["stats"]["ids"])
    np.testing.assert_array_equal(a["stats"]["counts"], b["stats"]["counts"])
    for key in a["stats"]:
        scale = max(np.abs(b["stats"][key]).max(), 1.0)
        assert np.abs(a["stats"][key] - b["stats"][key]).max() <= 1e-9 * scale, key


@pytest.mark.parametrize("extra", [{}, {"merge": {"prototypes": "exact", "head": "lda"}},
                                   {"merge": {"prototypes": "exact", "adapters": "ffa"},
                                    "adapters": {"schedule": "every_task", "rank": 2, "lr": 1e-3, "batch_size": 10}}],
                         ids=["ncm", "lda", "ffa adapters"])
def test_a_secure_run_ends_with_the_plain_runs_statistics_and_accuracy(extra, write_scenario, tmp_path):
    plain = write_scenario(small_scenario(tasks=SYNC, **extra), "plain.yaml")
    secure = write_scenario(small_scenario(tasks=SYNC, privacy={"secure_aggregation": True}, **extra), "secure.yaml")
    run(plain, tmp_path / "plain")
    summary = run(secure, tmp_path / "secure")
    a, b = ending(tmp_path / "secure"), ending(tmp_path / "plain")
    same_statistics(a, b)
    if "adapters" in extra:
        for key in b["model"]:
            np.testing.assert_allclose(a["model"][key], b["model"][key], rtol=1e-6, atol=1e-7)
    assert [r["accuracy"] for r in a["rows"]] == [r["accuracy"] for r in b["rows"]]
    assert summary["failures"] == 0
    assert summary["bytes_up"] > b["summary"]["bytes_up"]  # keys, shares and masked vectors travel instead


def test_a_client_that_drops_mid_aggregation_loses_no_task(write_scenario, tmp_path):
    # 3 clients a round, threshold 2 of 3: the two others' sum is unmasked, the dropped task comes back in round 2
    base = small_scenario(tasks=SYNC)
    run(write_scenario(base, "plain.yaml"), tmp_path / "plain")
    faults = {"retries": 2, "inject": [{"client": 0, "round": 1, "kind": "drop_mid_aggregation"}]}
    summary = run(write_scenario({**base, "privacy": {"secure_aggregation": True}, "faults": faults}), tmp_path / "secure")
    a, b = ending(tmp_path / "secure"), ending(tmp_path / "plain")
    same_statistics(a, b)
    assert summary["lost_tasks"] == 0 and summary["failures"] == 1 and summary["retries"] == 1
    assert a["summary"]["classes_learned"] == b["summary"]["classes_learned"] == 12
    assert a["rows"][0]["classes_learned"] == 4  # round 1: the two survivors' classes


def test_two_clients_a_round_and_one_drops_reveal_nothing(write_scenario, tmp_path):
    # staggered: round 2 holds clients 0 and 1; the threshold is at least 2, so one survivor reveals nothing
    faults = {"retries": 2, "inject": [{"client": 0, "round": 2, "kind": "drop_mid_aggregation"}]}
    path = write_scenario(small_scenario(tasks=STAGGERED, privacy={"secure_aggregation": True}, faults=faults))
    summary = run(path, tmp_path / "secure")
    assert summary["lost_tasks"] == 0 and summary["classes_learned"] == 12 and summary["failures"] == 2


def test_too_few_survivors_reveal_nothing_and_every_task_is_retried(write_scenario, tmp_path):
    faults = {"retries": 2, "inject": [{"client": 0, "round": 1, "kind": "drop_mid_aggregation"},
                                       {"client": 1, "round": 1, "kind": "drop_mid_aggregation"}]}
    path = write_scenario(small_scenario(tasks=SYNC, privacy={"secure_aggregation": True, "threshold": 1.0}, faults=faults))
    summary = run(path, tmp_path / "secure")
    rows = ending(tmp_path / "secure")["rows"]
    # round 1: two of three drop, threshold 3 of 3: nothing revealed, all three tasks retried in round 2
    assert rows[0]["classes_learned"] == 0 and summary["classes_learned"] == 12 and summary["lost_tasks"] == 0
    reasons = [f["reason"] for f in json.loads(np.load(tmp_path / "secure" / "checkpoint.npz")["meta"].tobytes())
               ["server"]["failures"]]
    assert sum("aborted" in r for r in reasons) == 1 and sum("drop_mid_aggregation" in r for r in reasons) == 2


def test_garbage_under_secure_aggregation_is_caught_in_the_sum_and_retried(write_scenario, tmp_path):
    base = small_scenario(tasks=SYNC)
    run(write_scenario(base, "plain.yaml"), tmp_path / "plain")
    faults = {"retries": 2, "inject": [{"client": 2, "round": 1, "kind": "garbage"}]}
    summary = run(write_scenario({**base, "privacy": {"secure_aggregation": True}, "faults": faults}), tmp_path / "secure")
    same_statistics(ending(tmp_path / "secure"), ending(tmp_path / "plain"))
    assert summary["lost_tasks"] == 0 and summary["failures"] == 3  # the whole round: nobody can be singled out


def test_the_server_never_receives_a_clients_statistics_in_the_clear(write_scenario, tmp_path):
    from tests.inprocess import InProcessGrid

    from fedrecon.scenario import load_scenario
    from server.prepare import prepare
    from server.run import Run

    path = write_scenario(small_scenario(tasks=SYNC, privacy={"secure_aggregation": True}))
    prep = prepare(load_scenario(path))
    seen = []

    class Watching(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            replies = super().send_and_receive(messages, timeout=timeout)
            seen.extend(replies)
            return replies

    job = Run(Watching(3), prep, tmp_path / "run", echo=lambda *a: None, poll_interval=0)
    job.start()
    job.run()
    assert not any(P.STATS in r.content for r in seen if not r.has_error())
    assert not any(P.SCORE_COUNTS in r.content for r in seen if not r.has_error())
    # 3 clients, 2 rounds, two sums a round: the statistics and the unknown threshold's counts
    assert sum(P.MASKED in r.content for r in seen if not r.has_error()) == 12


BASE = "name: t\nclients: {count: 3}\ntasks: {num_classes: 12, classes_per_task: 2, train_shots: 4, test_shots: 2}\n"


@pytest.mark.parametrize("extra, message", [
    ("merge: {prototypes: fedproto}", "merge.prototypes fedproto averages client prototypes"),
    ("merge: {prototypes: local}", "keeps each client's statistics apart"),
    ("merge: {prototypes: centralized}", "runs one site"),
    ("merge: {method: fedavg_finetune}", "fedavg_finetune sends whole models"),
    ("merge: {adapters: stack}\nadapters: {schedule: every_task}", "stack refactorises each client's factors"),
    ("evaluation: {where: clients}", "evaluation counts are not securely aggregated yet"),
])
def test_what_needs_more_than_a_sum_is_refused_in_one_line(extra, message):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(BASE + "privacy: {secure_aggregation: true}\n" + extra + "\n", "s.yaml")
    (line,) = err.value.problems
    assert "privacy.secure_aggregation" in line and message in line
    with pytest.raises(ScenarioError, match="drop_mid_aggregation needs privacy.secure_aggregation"):
        parse_scenario(BASE + "faults: {inject: [{client: 0, round: 1, kind: drop_mid_aggregation}]}\n", "s.yaml")
