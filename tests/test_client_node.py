"""What a node keeps between messages: the setup once, by digest; the data root its node config names."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients import node
from fedrecon import protocol as P
from fedrecon.protocol import setup_record
from fedrecon.scenario import scenario_json
from strategies.records import to_record
from tests.conftest import scenario_of
from tests.test_strategy import identity  # noqa: F401 (fixture)


def message(content: dict) -> Message:
    return Message(RecordDict(content), dst_node_id=1, message_type="train")


def test_the_setup_comes_once_and_is_read_from_the_context_after():
    # Prepare
    scenario = scenario_of(merge={"head": "lda"})
    setup = setup_record(scenario_json(scenario), "abc")
    context = Context(1, 1, {"partition-id": 2, "data-root": "/elsewhere"}, RecordDict(), {})
    # Execute: a first message with the setup, then one with only a task
    first = node.setup(message({P.SETUP: ConfigRecord(setup), P.BACKBONE: to_record({"w": np.ones(2)})}), context)
    later = node.setup(message({P.TASK_CONFIG: ConfigRecord({"round": 2, "task": 1})}), context)
    # Assert
    assert first == later and later.client == 2 and later.backbone_digest == "abc"
    assert later.scenario.merge.head == "lda" and later.scenario.data.root == "/elsewhere"
    assert later.scenario.model_copy(update={"data": scenario.data}).model_dump() == scenario.model_dump()
    assert node.held_digest(context) == setup["digest"] and node.backbone_state(context)["w"].tolist() == [1.0, 1.0]


def test_a_node_without_a_setup_says_so():
    context = Context(1, 1, {"partition-id": 0}, RecordDict(), {})
    assert node.held_digest(context) == ""
    with pytest.raises(node.NoSetup, match="no setup"):
        node.setup(message({}), context)
    # an installed backbone: the setup comes without weights
    setup = setup_record(scenario_json(scenario_of()), "abc")
    node.setup(message({P.SETUP: ConfigRecord(setup), P.BACKBONE: ArrayRecord({})}), context)
    assert node.backbone_state(context) is None
