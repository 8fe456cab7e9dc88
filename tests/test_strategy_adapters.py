"""ReconStrategy with adapters, offline with fake replies: merge, validation, rejection."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedrecon import protocol as P
from fedrecon.learning.adapter_merges import make_adapter_merge
from fedrecon.learning.stats import ClassStats
from strategies.adapter_steps import AdapterSteps
from strategies.records import from_record
from strategies.validation import PayloadError, check_adapter_update, check_drift
from tests.test_strategy import DIM, NODES, identity, make_strategy  # noqa: F401  (identity: autouse fixture)

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
    messages = s.configure_train(1, ArrayRecord(), ConfigRecord(), NODES)
    # Execute: equal sample counts, B of 1, 2, 3
    s.aggregate_train(1, [reply(m, b_factors(i + 1.0)) for i, m in enumerate(messages)])
    # Assert
    assert all(set(from_record(m.content[P.ADAPTER])) == {"conv.B", "lin.B"} for m in messages)
    np.testing.assert_allclose(s.adapters.state["conv.B"], 2.0)
    assert s.adapters.version == 1 and len(s.stats) == 6


def test_reply_with_a_bad_adapter_is_rejected_whole():
    # Prepare: one honest round, then client 0 sends NaN factors
    s = adapter_strategy()
    s.aggregate_train(1, [reply(m, b_factors(1.0)) for m in s.configure_train(1, ArrayRecord(), ConfigRecord(), NODES)])
    stats, state = s.stats.to_arrays(), {k: v.copy() for k, v in s.adapters.state.items()}
    liar = next(m for m in s.configure_train(2, ArrayRecord(), ConfigRecord(), NODES) if m.metadata.dst_node_id == 100)
    # Execute
    s.aggregate_train(2, [reply(liar, b_factors(np.nan))])
    # Assert: neither the statistics nor the adapter moved
    assert all(s.stats.to_arrays()[k].tobytes() == v.tobytes() for k, v in stats.items())
    assert all(s.adapters.state[k].tobytes() == v.tobytes() for k, v in state.items()) and s.adapters.version == 1
    assert "NaN" in {f["client"]: f["reason"] for f in s.failures if f["round"] == 2}[0]


def test_compensate_sends_prototypes_and_moves_old_statistics_by_the_drift():
    s = adapter_strategy(staleness="compensate")
    s.aggregate_train(1, [reply(m, b_factors(1.0)) for m in s.configure_train(1, ArrayRecord(), ConfigRecord(), NODES)])
    old = s.stats
    messages = s.configure_train(2, ArrayRecord(), ConfigRecord(), NODES)
    assert from_record(messages[0].content[P.TASK_ARRAYS])["prototypes"].shape == (6, DIM)
    shift = {"sums": np.ones((6, DIM)), "weights": np.ones(6)}  # every client: drift 1 in every coordinate
    s.aggregate_train(2, [reply(m, b_factors(2.0), shift) for m in messages])
    moved = s.stats.sums[np.isin(s.stats.ids, old.ids)]
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


class AdaptGrid:
    """Clients that answer adapter steps: ``answer(client, step)`` gives the factors
    (None: no reply), and every step's messages are recorded."""

    def __init__(self, answer):
        self.answer, self.sent = answer, []

    def send_and_receive(self, messages, timeout=None):
        self.sent.append(list(messages))
        out = []
        for m in messages:
            step = int(m.content[P.TASK_CONFIG]["step"])
            got = self.answer(m.metadata.dst_node_id - 100, step)
            if got is None:
                continue  # no reply
            out.append(Message(RecordDict({P.ADAPTER_UPDATE: ArrayRecord({k: Array(v) for k, v in got.items()}),
                                           P.METRICS: MetricRecord({"loss": 0.5})}), reply_to=m))
        return out

    def steps(self, s, server_round: int) -> list:
        """What the run does before a round's task messages: the adapter steps; then the task messages."""
        for step in range(s.steps(server_round)):
            if not s.aggregate_adapt(server_round, step, self.send_and_receive(s.configure_adapt(server_round, step))):
                break
        return s.configure_train(server_round, ArrayRecord(), ConfigRecord(), self)


def steps_strategy(steps: int = 2):
    return make_strategy(kind=AdapterSteps, adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
                         adapters={"schedule": "first_task", "rank": 2, "steps": steps})


def test_adapter_steps_merge_before_the_task_messages_and_summaries_do_not_move_the_adapter():
    # Prepare: client c answers B = (c + 1) * (step + 1): means 2, then 4 (equal sample counts)
    s = steps_strategy()
    grid = AdaptGrid(lambda c, step: b_factors((c + 1.0) * (step + 1)))
    # Execute
    messages = grid.steps(s, 1)
    # Assert: two adapter steps of three clients; the second started from the first's merge
    assert [len(r) for r in grid.sent] == [3, 3]
    assert all(m.metadata.message_type == "train.adapt" for r in grid.sent for m in r)
    np.testing.assert_allclose(from_record(grid.sent[1][0].content[P.ADAPTER])["conv.B"], 2.0)
    np.testing.assert_allclose(s.adapters.state["conv.B"], 4.0)
    assert s.adapters.version == 2 and [e["trainers"] for e in s.adapter_log] == [3, 3]
    # the task messages carry the merged adapter; their replies (no factors) only add statistics
    assert all(np.allclose(from_record(m.content[P.ADAPTER])["conv.B"], 4.0) for m in messages)
    s.aggregate_train(1, [reply(m, {}) for m in messages])
    assert s.adapters.version == 2 and len(s.stats) == 6 and not s.failures
    # adapter traffic counts in the round's bytes: more than the task messages alone
    assert s.traffic.of(1)["bytes_down"] > sum(len(m.content[P.ADAPTER]["conv.B"].data) for m in messages)


def test_a_bad_or_missing_adapter_reply_is_left_out_of_that_merge_only():
    # Prepare: in step 2 client 0 sends NaN and client 2 does not answer
    def answer(c, step):
        if step == 1 and c == 2:
            return None
        return b_factors(np.nan if (step == 1 and c == 0) else (c + 1.0) * (step + 1))

    s = steps_strategy()
    grid = AdaptGrid(answer)
    # Execute
    messages = grid.steps(s, 1)
    # Assert: step 2 merged client 1's B (4) alone; every client still got its task
    np.testing.assert_allclose(s.adapters.state["conv.B"], 4.0)
    assert s.adapter_log[1]["trainers"] == 1 and s.adapter_log[1]["failed"] == [0, 2]
    reasons = {f["client"]: f["reason"] for f in s.failures}
    assert "NaN" in reasons[0] and "no reply" in reasons[2]
    assert len(messages) == 3 and not s.book.waiting


def test_no_adapter_steps_in_a_round_without_arrivals_and_one_when_nobody_trains():
    s = steps_strategy()
    grid = AdaptGrid(lambda c, step: b_factors(1.0))
    assert s.steps(s.plan.rounds + 1) == 0
    grid.steps(s, s.plan.rounds + 1)
    assert grid.sent == []
    # a round whose clients all answer that they do not train (first_task, later tasks): one step only
    idle = AdaptGrid(lambda c, step: {})
    assert len(idle.steps(s, 2)) == 3
    assert len(idle.sent) == 1 and s.adapters.version == 0 and s.adapter_log[-1]["trainers"] == 0


def test_no_adapter_step_goes_out_when_the_schedule_trains_no_task_of_the_round():
    s = steps_strategy()
    assert s.steps(2) == 2  # nothing learned yet: first tasks train
    s.learned = {c: 1 for c in range(3)}  # every client past its first task (first_task)
    assert s.steps(2) == 0
    s.learned = {0: 1}
    assert s.steps(2) == 2  # clients 1 and 2 still train theirs
    limited = make_strategy(kind=AdapterSteps, adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
                            adapters={"schedule": "first_task", "rank": 2, "steps": 2, "until_round": 1})
    assert limited.steps(1) == 2 and limited.steps(2) == 0  # the adapter froze after round 1


class ReversedGrid(AdaptGrid):
    """The same clients' replies, the last first."""

    def send_and_receive(self, messages, timeout=None):
        return super().send_and_receive(messages, timeout)[::-1]


def test_adapters_and_statistics_are_merged_in_the_clients_order_whatever_order_replies_come_in():
    # Prepare: client c answers B = c + 1; the merges record what they are given, in order
    s = steps_strategy()
    seen = {"factors": [], "stats": []}
    adapter_merge, stats_merge = s.adapters.merge, s.policy.merge
    s.adapters.merge = lambda factors, weights: seen["factors"].append([float(f["conv.B"][0, 0]) for f in factors]) \
        or adapter_merge(factors, weights)
    s.policy.merge = lambda current, updates: seen["stats"].append([int(u.ids[0]) for u in updates]) \
        or stats_merge(current, updates)
    # Execute: every reply arrives last client first
    messages = ReversedGrid(lambda c, step: b_factors(c + 1.0)).steps(s, 1)
    s.aggregate_train(1, [reply(m, {}) for m in messages][::-1])
    # Assert: float addition is not associative, so the order is the clients', not the replies'
    assert seen["factors"] == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], []]  # two adapter steps, then the task replies' none
    first_class = {m.metadata.dst_node_id - 100: int(from_record(m.content[P.TASK_ARRAYS])["sample_labels"].min())
                   for m in messages}
    assert seen["stats"] == [[first_class[c] for c in sorted(first_class)]]


def test_adapter_steps_need_a_merging_policy():
    with pytest.raises(ValueError, match="steps"):
        make_strategy(kind=AdapterSteps, adapter_shapes=SHAPES, adapters={"schedule": "first_task"})


def test_adapter_steps_resend_the_setup_to_a_node_that_lost_it_and_count_it():
    # Prepare and execute round 1: the first adapter step carries the setup to every node
    s = steps_strategy()
    grid = AdaptGrid(lambda c, step: b_factors(1.0))
    first_round = grid.steps(s, 1)
    # Assert: the step's answers proved delivery, so the task messages do not carry it again
    assert all(P.BACKBONE in m.content for m in grid.sent[0])
    assert not any(P.BACKBONE in m.content for m in first_round)
    s.aggregate_train(1, [reply(m, {}) for m in first_round])
    # Prepare: client 1's node restarted since
    s.nodes.ready.discard(1)
    idle = AdaptGrid(lambda c, step: {})
    # Execute: round 2 (first_task: nobody trains, no adapter step)
    messages = idle.steps(s, 2)
    # Assert: the task message carries the setup to client 1 only, and it counts as resent
    assert idle.sent == []
    assert {m.metadata.dst_node_id: P.BACKBONE in m.content for m in messages} == {100: False, 101: True, 102: False}
    assert s.traffic.of(2)["bytes_down_resent"] > 0


def test_an_oversized_adapter_update_is_refused_unread():
    s = adapter_strategy()
    messages = s.configure_train(1, ArrayRecord(), ConfigRecord(), NODES)
    huge = {**b_factors(1.0), "conv.B": np.zeros((3, 200_000), np.float32)}  # 2.4 MB: over twice a valid update + 1 MB
    s.aggregate_train(1, [reply(messages[0], huge)] + [reply(m, b_factors(1.0)) for m in messages[1:]])
    assert "more than" in s.failures[0]["reason"] and s.adapters.version == 1 and len(s.stats) == 4


def test_a_federation_classifier_passes_on_the_checked_class_means_of_each_step():
    # Prepare: client 0 claims counts its task does not have; clients 1 and 2 send sums of mean c
    s = make_strategy(kind=AdapterSteps, adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
                      adapters={"schedule": "first_task", "rank": 2, "steps": 2, "classifier": "federation"})

    class MeansGrid(AdaptGrid):
        def send_and_receive(self, messages, timeout=None):
            replies = super().send_and_receive(messages, timeout)
            for r, m in zip(replies, messages):
                labels = from_record(m.content[P.TASK_ARRAYS])["sample_labels"]
                ids, counts = np.unique(labels, return_counts=True)
                c = m.metadata.dst_node_id - 100
                sums = np.full((len(ids), DIM), float(c)) * counts[:, None]
                r.content[P.STEP_CLASSES] = ArrayRecord({"ids": Array(ids), "counts": Array(counts + (c == 0)),
                                                         "sums": Array(sums)})
            return replies

    grid = MeansGrid(lambda c, step: b_factors(1.0))
    # Execute
    grid.steps(s, 1)
    # Assert: step 1 knew nothing; client 0 was left out of it; step 2 carried clients 1 and 2's classes and sums
    first, second = grid.sent
    assert not any("known_ids" in m.content[P.TASK_ARRAYS] for m in first)
    assert s.adapter_log[0]["failed"] == [0] and "counts" in s.failures[0]["reason"]
    arrays = from_record(second[0].content[P.TASK_ARRAYS])
    theirs = {c: set(from_record(m.content[P.TASK_ARRAYS])["sample_labels"].tolist()) for c, m in enumerate(first)}
    assert set(arrays["known_ids"].tolist()) == theirs[1] | theirs[2]
    means = arrays["known_sums"][:, 0] / arrays["known_counts"]
    by_class = dict(zip(arrays["known_ids"].tolist(), means.tolist()))
    assert {by_class[k] for k in theirs[1]} == {1.0} and {by_class[k] for k in theirs[2]} == {2.0}


def test_under_features_both_a_step_replys_class_sums_are_the_adapted_half_wide():
    # Prepare: summarised features are DIM wide (frozen half, adapted half); the loss's are DIM // 2
    s = make_strategy(kind=AdapterSteps, adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
                      adapters={"schedule": "first_task", "rank": 2, "steps": 2, "classifier": "federation",
                                "features": "both"})

    class WidthGrid(AdaptGrid):
        def send_and_receive(self, messages, timeout=None):
            replies = super().send_and_receive(messages, timeout)
            for r, m in zip(replies, messages):
                ids, counts = np.unique(from_record(m.content[P.TASK_ARRAYS])["sample_labels"], return_counts=True)
                width = DIM if m.metadata.dst_node_id == 100 else DIM // 2  # client 0 sends the summary's width
                r.content[P.STEP_CLASSES] = ArrayRecord({"ids": Array(ids), "counts": Array(counts),
                                                         "sums": Array(np.ones((len(ids), width)))})
            return replies

    # Execute
    WidthGrid(lambda c, step: b_factors(1.0)).steps(s, 1)
    # Assert: client 0 was left out of both steps, with a line naming the width allowed; the others merged
    assert [e["failed"] for e in s.adapter_log] == [[0], [0]]
    assert f"not (2, {DIM // 2}) finite floats" in s.failures[0]["reason"]
    assert [e["trainers"] for e in s.adapter_log] == [2, 2]
