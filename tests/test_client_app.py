"""The ClientApp's handlers: what they read from a message and what they reply."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients import evaluator
from clients.client_app import app as client_app
from fedrecon import protocol as P
from fedrecon.learning.stats import ClassStats
from fedrecon.protocol import setup_record
from fedrecon.scenario import scenario_json
from tests.conftest import scenario_of


def _record(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def test_an_evaluate_message_is_scored_with_the_merged_statistics(monkeypatch, tmp_path):
    # Prepare: the server's merged statistics and this client's test share
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # a message built outside a Flower app
    merged = ClassStats.from_features(np.array([1, 1, 2]), np.arange(6.0).reshape(3, 2)).to_arrays()
    scored = {}

    def score_share(setup, stats, sample_index, sample_labels, round, adapter):
        scored.update(stats=stats, index=sample_index, round=round, adapter=adapter)
        return 3, 4

    monkeypatch.setattr(evaluator, "score_share", score_share)
    content = {P.SETUP: ConfigRecord({**setup_record(scenario_json(scenario_of()), "abc"), "weights": "installed"}),
               P.EVAL_CONFIG: ConfigRecord({"round": 2}),
               P.EVAL_ARRAYS: _record({"sample_index": np.arange(4), "sample_labels": np.array([1, 1, 2, 2])}),
               P.MERGED_STATS: _record(merged)}
    context = Context(1, 1, {"partition-id": 0, "cache-dir": str(tmp_path)}, RecordDict(), {})
    # Execute
    reply = client_app(Message(RecordDict(content), dst_node_id=1, message_type="evaluate"), context)
    # Assert
    assert dict(reply.content[P.METRICS]) == {"correct": 3, "samples": 4}
    assert set(scored["stats"]) == set(merged) and scored["round"] == 2 and scored["adapter"] is None
    for key, value in merged.items():
        np.testing.assert_array_equal(scored["stats"][key], value)
    np.testing.assert_array_equal(scored["index"], np.arange(4))
