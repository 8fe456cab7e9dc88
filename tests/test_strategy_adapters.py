"""The task phase with adapters, offline with fake replies: merge, validation, rejection."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedrecon import protocol as P
from fedrecon.learning.adapter_merges import make_adapter_merge
from fedrecon.learning.stats import ClassStats
from strategies.wire import from_record
from strategies.validation import PayloadError, check_adapter_update, check_drift
from tests.test_strategy import DIM, identity, make_strategy  # noqa: F401  (identity: autouse fixture)

SHAPES = {"conv": (3, 5), "lin": (2, 4)}


def adapter_strategy(staleness: str = "keep"):
    return make_strategy(adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
                         adapters={"schedule": "every_task", "rank": 2, "staleness": staleness})


def reply(msg: Message, factors: dict, drift: dict | None = None) -> Message:
    arrays = from_record(msg.content[P.TASK_ARRAYS])
    feats = np.random.default_rng(int(arrays["sample_index"][0])).normal(size=(len(arrays["sample_labels"]), DIM))
    content = RecordDict({
        P.STATS: ArrayRecord({k: Array(v) for k, v in ClassStats.from_features(arrays["sample_labels"], feats).to_arrays().items()}),
        P.ADAPTER_UPDATE: ArrayRecord({k: Array(np.asarray(v)) for k, v in factors.items()}),
        P.METRICS: MetricRecord({"samples": 1}),
    })
    if drift is not None:
        content[P.DRIFT] = ArrayRecord({k: Array(v) for k, v in drift.items()})
    return Message(content, reply_to=msg)


def b_factors(value: float) -> dict:
    return {f"{n}.B": np.full((out, 2), value, np.float32) for n, (out, _) in SHAPES.items()}


def test_ffa_round_averages_b_and_sends_only_factors():
    # Prepare
    s = adapter_strategy()
    messages = s.tasks(1)
    # Execute: equal sample counts, B of 1, 2, 3
    s.replies(1, [reply(m, b_factors(i + 1.0)) for i, m in enumerate(messages)])
    # Assert
    assert all(set(from_record(m.content[P.ADAPTER])) == {"conv.B", "lin.B"} for m in messages)
    np.testing.assert_allclose(s.state.adapters.state["conv.B"], 2.0)
    assert s.state.adapters.version == 1 and len(s.state.stats) == 6


def test_reply_with_a_bad_adapter_is_rejected_whole():
    # Prepare: one honest round, then client 0 sends NaN factors
    s = adapter_strategy()
    s.replies(1, [reply(m, b_factors(1.0)) for m in s.tasks(1)])
    stats, state = s.state.stats.to_arrays(), {k: v.copy() for k, v in s.state.adapters.state.items()}
    liar = next(m for m in s.tasks(2) if m.metadata.dst_node_id == 100)
    # Execute
    s.replies(2, [reply(liar, b_factors(np.nan))])
    # Assert: neither the statistics nor the adapter moved
    assert all(s.state.stats.to_arrays()[k].tobytes() == v.tobytes() for k, v in stats.items())
    assert all(s.state.adapters.state[k].tobytes() == v.tobytes() for k, v in state.items()) and s.state.adapters.version == 1
    assert "NaN" in {f["client"]: f["reason"] for f in s.state.failures if f["round"] == 2}[0]


def test_compensate_sends_prototypes_and_moves_old_statistics_by_the_drift():
    s = adapter_strategy(staleness="compensate")
    s.replies(1, [reply(m, b_factors(1.0)) for m in s.tasks(1)])
    old = s.state.stats
    messages = s.tasks(2)
    assert from_record(messages[0].content[P.TASK_ARRAYS])["prototypes"].shape == (6, DIM)
    shift = {"sums": np.ones((6, DIM)), "weights": np.ones(6)}  # every client: drift 1 in every coordinate
    s.replies(2, [reply(m, b_factors(2.0), shift) for m in messages])
    moved = s.state.stats.sums[np.isin(s.state.stats.ids, old.ids)]
    np.testing.assert_allclose(moved, old.sums + old.counts[:, None])


@pytest.mark.parametrize("bad", ["missing", "dtype", "shape", "extra"])
def test_adapter_update_checks(bad):
    good = {**b_factors(0.5), **{f"{n}.A": np.zeros((2, f), np.float32) for n, (_, f) in SHAPES.items()}}
    assert check_adapter_update({}, SHAPES, 2, "AB") is None
    assert check_adapter_update(good, SHAPES, 2, "AB") is good
    broken = dict(good)
    if bad == "missing":
        del broken["conv.A"]
    elif bad == "dtype":
        broken["conv.A"] = broken["conv.A"].astype(np.float64)
    elif bad == "shape":
        broken["lin.B"] = np.zeros((2, 3), np.float32)
    else:
        broken["backbone.weight"] = np.zeros(3, np.float32)
    with pytest.raises(PayloadError):
        check_adapter_update(broken, SHAPES, 2, "AB")
    with pytest.raises(PayloadError, match="negative"):
        check_drift({"sums": np.zeros((2, 4)), "weights": -np.ones(2)}, 2, 4)
    assert make_adapter_merge("ffa").replies == "B"


def test_an_oversized_adapter_update_is_refused_unread():
    s = adapter_strategy()
    messages = s.tasks(1)
    huge = {**b_factors(1.0), "conv.B": np.zeros((3, 200_000), np.float32)}  # 2.4 MB: over twice a valid update + 1 MB
    s.replies(1, [reply(messages[0], huge)] + [reply(m, b_factors(1.0)) for m in messages[1:]])
    assert "more than" in s.state.failures[0]["reason"] and s.state.adapters.version == 1 and len(s.state.stats) == 4
