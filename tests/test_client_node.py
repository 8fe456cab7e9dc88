"""What a node keeps between messages: the setup once, by digest; the data root its node config names."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients import node
from clients.setup import NoSetup, backbone_weights
from fedrecon import protocol as P
from fedrecon.backbones import weights as weights_module
from fedrecon.backbones.weights import state_digest
from fedrecon.protocol import setup_record
from fedrecon.scenario import scenario_json
from strategies.wire import to_record
from tests.conftest import scenario_of
from tests.test_strategy import identity  # noqa: F401 (fixture)


def message(content: dict) -> Message:
    return Message(RecordDict(content), dst_node_id=1, message_type="train")


def sent(weights: dict) -> dict:
    """A setup record as the server sends it with weights (digest of ``weights``)."""
    return {**setup_record(scenario_json(scenario_of(merge={"head": "lda"})), state_digest(weights)), "weights": "sent"}


@pytest.fixture
def fresh_process(monkeypatch):
    """This process as if it held no weights yet (another worker, a new SuperNode process)."""
    monkeypatch.setattr(weights_module, "_HELD", {})


def test_the_setup_comes_once_and_is_read_from_the_context_after(tmp_path, fresh_process):
    # Prepare
    weights = {"w": np.ones(2)}
    setup = sent(weights)
    context = Context(1, 1, {"partition-id": 2, "data-root": "/elsewhere", "cache-dir": str(tmp_path)}, RecordDict(), {})
    # Execute: a first message with the setup, then one with only a task
    first = node.setup(message({P.SETUP: ConfigRecord(setup), P.BACKBONE: to_record(weights)}), context)
    later = node.setup(message({P.TASK_CONFIG: ConfigRecord({"round": 2, "task": 1})}), context)
    # Assert
    assert first == later and later.client == 2 and later.backbone_digest == state_digest(weights)
    assert later.scenario.merge.head == "lda" and later.scenario.data.root == "/elsewhere"
    assert node.held_digest(context) == setup["digest"] and backbone_weights(later)["w"].tolist() == [1.0, 1.0]
    # the weights are not in the node's context, which Flower's simulation moves with every message
    assert P.BACKBONE not in context.state and list(context.state.keys()) == [node.SETUP]


def test_weights_are_read_by_another_process_from_the_machine_and_a_bad_file_is_refused(tmp_path, monkeypatch):
    # Prepare: one process is sent the weights
    monkeypatch.setattr(weights_module, "_HELD", {})
    weights = {"a": np.arange(3.0), "b": np.eye(2, dtype=np.float32)}
    config = {"partition-id": 0, "cache-dir": str(tmp_path)}
    context = Context(1, 1, config, RecordDict(), {})
    setup = node.setup(message({P.SETUP: ConfigRecord(sent(weights)), P.BACKBONE: to_record(weights)}), context)
    # Execute: another process on the machine (nothing held in memory) reads them from the node's folder
    monkeypatch.setattr(weights_module, "_HELD", {})
    read = backbone_weights(setup)
    # Assert
    assert {k: v.tolist() for k, v in read.items()} == {k: v.tolist() for k, v in weights.items()}
    assert read["b"].dtype == np.float32
    assert state_digest(weights) in node.held_weights(config).split(",")
    # a file changed on disk is removed, and the node asks for the weights again
    monkeypatch.setattr(weights_module, "_HELD", {})
    path = tmp_path / "weights" / f"{state_digest(weights)}.npz"
    np.savez(path, a=np.zeros(3), b=np.eye(2, dtype=np.float32))
    with pytest.raises(NoSetup, match="no backbone weights"):
        backbone_weights(setup)
    assert not path.exists() and node.held_weights(config) == ""


def test_weights_that_do_not_match_their_digest_are_refused(tmp_path, fresh_process):
    context = Context(1, 1, {"partition-id": 0, "cache-dir": str(tmp_path)}, RecordDict(), {})
    record = sent({"w": np.ones(2)})
    with pytest.raises(ValueError, match="do not match digest"):
        node.setup(message({P.SETUP: ConfigRecord(record), P.BACKBONE: to_record({"w": np.zeros(2)})}), context)
    assert not (tmp_path / "weights").exists() or not list((tmp_path / "weights").iterdir())


def test_a_node_without_a_setup_says_so(tmp_path, fresh_process):
    context = Context(1, 1, {"partition-id": 0, "cache-dir": str(tmp_path)}, RecordDict(), {})
    assert node.held_digest(context) == ""
    with pytest.raises(NoSetup, match="no setup"):
        node.setup(message({}), context)
    # an installed backbone: the setup comes without weights
    setup = {**setup_record(scenario_json(scenario_of()), "abc"), "weights": "installed"}
    assert backbone_weights(node.setup(message({P.SETUP: ConfigRecord(setup)}), context)) is None
    # weights sent but held neither here nor on the machine: the server is asked for them
    setup = {**setup_record(scenario_json(scenario_of()), "abc"), "weights": "sent"}
    with pytest.raises(NoSetup, match="no backbone weights"):
        backbone_weights(node.setup(message({P.SETUP: ConfigRecord(setup)}), context))


def test_the_identify_warm_up_and_the_tasks_parse_the_scenario_once(tmp_path, monkeypatch):
    # Prepare: a process that has parsed nothing yet, counting its parses
    monkeypatch.setattr(node, "_SCENARIOS", {})
    parses = []
    monkeypatch.setattr(node, "scenario_from_json", lambda text: parses.append(text) or scenario_of())
    text = scenario_json(scenario_of())
    context = Context(1, 1, {"partition-id": 0, "cache-dir": str(tmp_path)}, RecordDict(), {})
    # Execute: the identify query's warm-up, then a task with the setup, then a task without
    node.prepare_data(text, context.node_config)
    node.setup(message({P.SETUP: ConfigRecord({**setup_record(text, "abc"), "weights": "installed"})}), context)
    node.setup(message({}), context)
    # Assert
    assert parses == [text]
