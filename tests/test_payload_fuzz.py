"""Bad payloads, generated: every one is rejected and the global statistics stay bit for bit."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecon import protocol as P
from strategies.wire import from_record
from tests.test_strategy import DIM, honest_reply, identity, make_strategy  # noqa: F401 (fixture)

KINDS = ["nan", "inf", "negative_count", "zero_count", "count_off", "foreign_class", "duplicate_id", "missing_class",
         "extra_class", "wrong_dim", "rows_short", "sums_1d", "counts_2d", "float32", "int_counts", "float_ids",
         "missing_key", "oversize", "not_arrays"]


def spoil(arrays: dict, kind: str, data) -> dict | str:
    a = {k: np.array(v) for k, v in arrays.items()}
    n = len(a["ids"])
    row = data.draw(st.integers(0, n - 1), label="row")
    if kind in ("nan", "inf"):
        target = data.draw(st.sampled_from(["counts", "sums"]), label="array")
        a[target].reshape(-1)[data.draw(st.integers(0, a[target].size - 1), label="cell")] = np.nan if kind == "nan" else -np.inf
    elif kind == "negative_count":
        a["counts"][row] = -data.draw(st.floats(0.5, 1e6), label="count")
    elif kind == "zero_count":
        a["counts"][row] = 0.0
    elif kind == "count_off":
        a["counts"][row] += data.draw(st.sampled_from([-1.0, 1.0, 0.5, 1e-9]), label="delta")
    elif kind == "foreign_class":
        a["ids"][row] = data.draw(st.sampled_from([-1, 29, 30, 10_000, 2**40]), label="id")
    elif kind == "duplicate_id":
        a["ids"][(row + 1) % n] = a["ids"][row]
    elif kind == "missing_class":
        keep = np.arange(n) != row
        a = {"ids": a["ids"][keep], "counts": a["counts"][keep], "sums": a["sums"][keep]}
    elif kind == "extra_class":
        a = {"ids": np.append(a["ids"], 29), "counts": np.append(a["counts"], 4.0), "sums": np.vstack([a["sums"], np.ones(DIM)])}
    elif kind == "wrong_dim":
        a["sums"] = np.zeros((n, data.draw(st.sampled_from([1, DIM - 1, DIM + 1, 64]), label="dim")))
    elif kind == "rows_short":
        a["sums"] = a["sums"][:-1]
    elif kind == "sums_1d":
        a["sums"] = a["sums"].reshape(-1)
    elif kind == "counts_2d":
        a["counts"] = a["counts"][:, None]
    elif kind == "float32":
        a[data.draw(st.sampled_from(["counts", "sums"]), label="array")] = a["sums"].astype(np.float32)
    elif kind == "int_counts":
        a["counts"] = a["counts"].astype(np.int64)
    elif kind == "float_ids":
        a["ids"] = a["ids"].astype(np.float64)
    elif kind == "missing_key":
        del a[data.draw(st.sampled_from(["ids", "counts", "sums"]), label="key")]
    elif kind == "oversize":
        a["padding"] = np.zeros(2_000_000 // 8)
    elif kind == "not_arrays":
        return "config"
    return a


def make_reply(msg: Message, arrays) -> Message:
    if arrays == "config":
        content = RecordDict({P.STATS: ConfigRecord({"ids": [1, 2]}), P.METRICS: MetricRecord({"samples": 1})})
    else:
        content = RecordDict({P.STATS: ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                              P.METRICS: MetricRecord({"samples": 1})})
    return Message(content, reply_to=msg)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_every_bad_payload_is_rejected_and_state_is_bit_identical(data):
    # Prepare: an honest round 1, then round 2 where every client sends a spoiled reply.
    strategy = make_strategy(faults={"max_reply_bytes": 1_000_000})
    first = strategy.tasks(1)
    strategy.replies(1, [honest_reply(m) for m in first])
    before = {k: v.tobytes() for k, v in strategy.state.stats.to_arrays().items()}
    failures_before = len(strategy.state.failures)
    second = strategy.tasks(2)
    kinds = [data.draw(st.sampled_from(KINDS), label=f"kind {i}") for i in range(len(second))]
    replies = [make_reply(m, spoil(from_record(honest_reply(m).content[P.STATS]), k, data)) for m, k in zip(second, kinds)]
    # Execute
    strategy.replies(2, replies)
    # Assert
    assert strategy.state.learned == {c: 1 for c in range(3)}  # round 1's tasks only
    assert {k: v.tobytes() for k, v in strategy.state.stats.to_arrays().items()} == before
    new = strategy.state.failures[failures_before:]
    assert len(new) == len(second)
    assert all(f["reason"] and "no reply" not in f["reason"] for f in new)
    # Each rejected task waits to be offered again.
    assert sorted(strategy.state.book.waiting) == sorted(a.client for a in strategy.state.plan.arrivals_at(2))
