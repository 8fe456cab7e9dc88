"""Replies with second-order statistics: what the server accepts and what it rejects."""

import numpy as np
import pytest

from flwr.supercore.task_identity import TaskIdentity

from fedrecon import protocol as P
from fedrecon.learning.heads import head_spec
from fedrecon.learning.stats import ClassStats, StatsSpec, pack_symmetric
from fedrecon.plan import make_plan
from fedrecon.protocol import setup_record
from fedrecon.scenario import parse_scenario, scenario_json
from strategies.phases import server_state
from strategies.prototypes import Prototypes
from strategies.rounds import deal
from strategies.setup import NodeSetup
from strategies.tasks import TaskMessages, Tasks
from strategies.validation import PayloadError, check_update
from tests.test_strategy import reply_with

DIM = 4
SPEC = StatsSpec(second_moment=True, random_features=6, projection_seed=1)


@pytest.fixture(autouse=True)
def identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


@pytest.fixture
def plan():
    scenario = parse_scenario("name: t\nclients: {count: 2}\ntasks: {num_classes: 4, classes_per_task: 2, train_shots: 3, test_shots: 1}\n")
    return make_plan(scenario, [np.arange(10 * c, 10 * c + 10) for c in range(8)])


def honest(arrival, spec=SPEC) -> dict:
    x = np.random.default_rng(arrival.client).normal(size=(len(arrival.sample_labels), DIM))
    return ClassStats.from_features(arrival.sample_labels, x, spec).to_arrays()


def test_honest_second_order_reply_is_accepted(plan):
    arrival = plan.arrivals[0]
    stats = check_update(honest(arrival), arrival, DIM, SPEC)
    assert stats.shared["gram"].shape == (6, 6) and stats.shared["second_moment"].shape == (DIM, DIM)
    np.testing.assert_array_equal(stats.shared["gram"], stats.shared["gram"].T)


def tamper(arrays: dict, key: str, value) -> dict:
    out = dict(arrays)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


@pytest.mark.parametrize("change, message", [
    (lambda a: tamper(a, "gram", None), "missing arrays \\['gram'\\]"),
    (lambda a: tamper(a, "gram", a["gram"][:-1]), "upper triangle of a 6x6"),
    (lambda a: tamper(a, "gram", a["gram"].astype(np.float32)), "float64 upper triangle"),
    (lambda a: tamper(a, "gram", np.where(np.arange(21) == 3, np.nan, a["gram"])), "gram holds NaN"),
    (lambda a: tamper(a, "gram", np.where(np.arange(21) == 1, -1.0, a["gram"])), "negative entry"),
    (lambda a: tamper(a, "gram", a["gram"] * 0.01), "trace is smaller"),
    (lambda a: tamper(a, "rf_sums", -a["rf_sums"] - 1), "non-negative"),
    (lambda a: tamper(a, "rf_sums", a["rf_sums"][:, :5]), "rf_sums must be float64"),
    (lambda a: tamper(a, "second_moment", pack_symmetric(-np.eye(DIM))), "negative diagonal"),
    (lambda a: tamper(a, "second_moment", a["second_moment"] * 0.001), "smaller than the class means imply"),
    (lambda a: tamper(a, "extra", np.zeros(3)), "unexpected arrays \\['extra'\\]"),
])
def test_malformed_second_order_reply_is_rejected(plan, change, message):
    arrival = plan.arrivals[0]
    with pytest.raises(PayloadError, match=message):
        check_update(change(honest(arrival)), arrival, DIM, SPEC)


def test_rejected_reply_leaves_the_global_statistics_alone(plan):
    # Prepare
    scenario = parse_scenario("name: t\nseed: 1\nclients: {count: 2}\nmerge: {head: ridge, random_features: 6}\n"
                              "tasks: {num_classes: 4, classes_per_task: 2, train_shots: 3, test_shots: 1}\n")
    spec = head_spec(scenario.merge, scenario.seed)
    setup = setup_record(scenario_json(scenario), "d")
    state = server_state(plan, scenario, setup, DIM)
    state.nodes.ids = {0: 100, 1: 101}
    tasks = Tasks(TaskMessages(scenario, Prototypes(), NodeSetup(setup, {"w": np.ones(2, np.float32)})))
    work = deal(state, 1)
    outbox = tasks.build(state, work, 0)
    by_node = {a: outbox.to[m.metadata.dst_node_id][0] for a, m in zip(range(2), outbox.messages)}
    good = honest(by_node[0], spec)
    bad = tamper(honest(by_node[1], spec), "gram", None)
    # Execute
    tasks.absorb(state, work, outbox, [reply_with(outbox.messages[0], good), reply_with(outbox.messages[1], bad)])
    # Assert
    merged = state.stats
    assert state.learned == {0: 1} and len(state.failures) == 1 and "gram" in state.failures[0]["reason"]
    assert merged.ids.tolist() == sorted(by_node[0].classes)
    np.testing.assert_array_equal(merged.shared["gram"], ClassStats.from_arrays(good).shared["gram"])
    # the head's settings reach the clients in the scenario the setup carries, not in each task message
    from fedrecon.scenario import scenario_from_json

    sent = scenario_from_json(outbox.messages[0].content[P.SETUP]["scenario"])
    assert sent.merge.random_features == 6 and sent.seed == 1 and "random_features" not in outbox.messages[0].content[P.TASK_CONFIG]
