"""A round's phases over one server state: chosen once from the scenario, building without side effects."""

import copy
import json

import numpy as np
import pytest

from strategies.adapter_steps import AdapterSteps
from strategies.client_evaluation import ClientEvaluation
from strategies.secure import MaskedTasks, SecureKeys, SecureShares, Unmask
from strategies.tasks import Tasks
from strategies.unknown_threshold import UnknownThreshold
from tests.test_strategy import honest_reply, identity, make_strategy  # noqa: F401 (identity: autouse fixture)
from tests.test_strategy_adapters import SHAPES

SCENARIOS = {
    "plain": ({}, [Tasks, UnknownThreshold]),
    "finetune": ({"merge": {"method": "fedavg_finetune"}}, [Tasks]),
    "secure": ({"privacy": {"secure_aggregation": True}}, [SecureKeys, SecureShares, MaskedTasks, Unmask, UnknownThreshold]),
    "adapter steps, evaluated on the clients": (
        {"merge": {"adapters": "ffa"}, "adapters": {"schedule": "first_task", "rank": 2, "steps": 2},
         "evaluation": {"where": "clients"}}, [AdapterSteps, Tasks, ClientEvaluation, UnknownThreshold]),
}


def server(name: str):
    sections, _ = SCENARIOS[name]
    model = {"head.ids": np.zeros(0, np.int64)} if name == "finetune" else None
    return make_strategy(adapter_shapes=SHAPES if "adapters" in sections else None, model=model, seed=3, **sections)


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_phases_are_chosen_once_from_the_scenario(name):
    assert [type(p) for p in server(name).phases] == SCENARIOS[name][1]


def snapshot(state) -> tuple:
    """Everything a phase could change, as bytes and JSON."""
    arrays = {k: v.tobytes() for k, v in state.stats.to_arrays().items()}
    model = {k: v.tobytes() for k, v in state.model_arrays().items()}
    nodes = copy.deepcopy((state.nodes.ids, state.nodes.ready, state.nodes.weighted, state.nodes.sent_setup))
    return arrays, model, nodes, json.dumps(state.state(), sort_keys=True)


@pytest.mark.parametrize("name", ["plain", "adapter steps, evaluated on the clients"])
def test_building_a_phases_messages_changes_nothing(name):
    # Prepare: one round learned, so that every phase has something to send in round 2
    s = server(name)
    s.replies(1, [honest_reply(m) for m in s.tasks(1)])
    work = s.work(2)
    for phase in s.phases:
        before = snapshot(s.state)
        # Execute
        for step in range(max(1, phase.exchanges(s.state, work))):
            outbox = phase.build(s.state, work, step)
            assert outbox.messages
        # Assert
        assert snapshot(s.state) == before, type(phase).__name__


def test_the_merged_statistics_go_down_only_in_an_evaluation_message():
    s = server("adapter steps, evaluated on the clients")
    s.replies(1, [honest_reply(m) for m in s.tasks(1)])
    evaluation = s.build(ClientEvaluation, 1)
    assert len(evaluation) == 3 and all("merged_stats" in m.content for m in evaluation)
    assert not any("merged_stats" in m.content for m in s.tasks(2))
