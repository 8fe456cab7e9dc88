"""The adapter-step phase offline, with fake replies: steps, merges, left-out trainers, the federation classifier."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedrecon import protocol as P
from fedrecon.scenario import ScenarioError
from strategies.adapter_steps import AdapterSteps
from strategies.wire import from_record
from tests.test_strategy import DIM, identity, make_strategy  # noqa: F401  (identity: autouse fixture)
from tests.test_strategy_adapters import SHAPES, b_factors, reply

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
        for step in range(steps_of(s, server_round)):
            if not s.absorb(AdapterSteps, server_round, self.send_and_receive(s.build(AdapterSteps, server_round, step))):
                break
        return s.tasks(server_round)


def steps_of(s, server_round: int) -> int:
    """The adapter steps the round starts with."""
    return s.phase(AdapterSteps).exchanges(s.state, s.work(server_round))


def steps_strategy(steps: int = 2):
    return make_strategy(adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
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
    np.testing.assert_allclose(s.state.adapters.state["conv.B"], 4.0)
    assert s.state.adapters.version == 2 and [e["trainers"] for e in s.state.adapter_log] == [3, 3]
    # the task messages carry the merged adapter; their replies (no factors) only add statistics
    assert all(np.allclose(from_record(m.content[P.ADAPTER])["conv.B"], 4.0) for m in messages)
    s.replies(1, [reply(m, {}) for m in messages])
    assert s.state.adapters.version == 2 and len(s.state.stats) == 6 and not s.state.failures
    # adapter traffic counts in the round's bytes: more than the task messages alone
    assert s.state.traffic.of(1)["bytes_down"] > sum(len(m.content[P.ADAPTER]["conv.B"].data) for m in messages)


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
    np.testing.assert_allclose(s.state.adapters.state["conv.B"], 4.0)
    assert s.state.adapter_log[1]["trainers"] == 1 and s.state.adapter_log[1]["failed"] == [0, 2]
    reasons = {f["client"]: f["reason"] for f in s.state.failures}
    assert "NaN" in reasons[0] and "no reply" in reasons[2]
    assert len(messages) == 3 and not s.state.book.waiting


def test_no_adapter_steps_in_a_round_without_arrivals_and_one_when_nobody_trains():
    s = steps_strategy()
    grid = AdaptGrid(lambda c, step: b_factors(1.0))
    assert steps_of(s, s.state.plan.rounds + 1) == 0
    grid.steps(s, s.state.plan.rounds + 1)
    assert grid.sent == []
    # a round whose clients all answer that they do not train (first_task, later tasks): one step only
    idle = AdaptGrid(lambda c, step: {})
    assert len(idle.steps(s, 2)) == 3
    assert len(idle.sent) == 1 and s.state.adapters.version == 0 and s.state.adapter_log[-1]["trainers"] == 0


def test_no_adapter_step_goes_out_when_the_schedule_trains_no_task_of_the_round():
    s = steps_strategy()
    assert steps_of(s, 2) == 2  # nothing learned yet: first tasks train
    s.state.learned = {c: 1 for c in range(3)}  # every client past its first task (first_task)
    assert steps_of(s, 2) == 0
    s.state.learned = {0: 1}
    assert steps_of(s, 2) == 2  # clients 1 and 2 still train theirs
    limited = make_strategy(adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
                            adapters={"schedule": "first_task", "rank": 2, "steps": 2, "until_round": 1})
    assert steps_of(limited, 1) == 2 and steps_of(limited, 2) == 0  # the adapter froze after round 1


class ReversedGrid(AdaptGrid):
    """The same clients' replies, the last first."""

    def send_and_receive(self, messages, timeout=None):
        return super().send_and_receive(messages, timeout)[::-1]


def test_adapters_and_statistics_are_merged_in_the_clients_order_whatever_order_replies_come_in():
    # Prepare: client c answers B = c + 1; the merges record what they are given, in order
    s = steps_strategy()
    seen = {"factors": [], "stats": []}
    adapter_merge, stats_merge = s.state.adapters.merge, s.state.policy.merge
    s.state.adapters.merge = lambda factors, weights: seen["factors"].append([float(f["conv.B"][0, 0]) for f in factors]) \
        or adapter_merge(factors, weights)
    s.state.policy.merge = lambda current, updates: seen["stats"].append([int(u.ids[0]) for u in updates]) \
        or stats_merge(current, updates)
    # Execute: every reply arrives last client first
    messages = ReversedGrid(lambda c, step: b_factors(c + 1.0)).steps(s, 1)
    s.replies(1, [reply(m, {}) for m in messages][::-1])
    # Assert: float addition is not associative, so the order is the clients', not the replies'
    assert seen["factors"] == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], []]  # two adapter steps, then the task replies' none
    first_class = {m.metadata.dst_node_id - 100: int(from_record(m.content[P.TASK_ARRAYS])["sample_labels"].min())
                   for m in messages}
    assert seen["stats"] == [[first_class[c] for c in sorted(first_class)]]


def test_adapter_steps_need_a_merging_policy():
    with pytest.raises(ScenarioError, match="merge.adapters is none"):
        make_strategy(adapter_shapes=SHAPES, merge={"adapters": "none"}, adapters={"schedule": "first_task", "steps": 2})


def test_adapter_steps_resend_the_setup_to_a_node_that_lost_it_and_count_it():
    # Prepare and execute round 1: the first adapter step carries the setup to every node
    s = steps_strategy()
    grid = AdaptGrid(lambda c, step: b_factors(1.0))
    first_round = grid.steps(s, 1)
    # Assert: the step's answers proved delivery, so the task messages do not carry it again
    assert all(P.BACKBONE in m.content for m in grid.sent[0])
    assert not any(P.BACKBONE in m.content for m in first_round)
    s.replies(1, [reply(m, {}) for m in first_round])
    # Prepare: client 1's node restarted since
    s.state.nodes.ready.discard(1)
    idle = AdaptGrid(lambda c, step: {})
    # Execute: round 2 (first_task: nobody trains, no adapter step)
    messages = idle.steps(s, 2)
    # Assert: the task message carries the setup to client 1 only, and it counts as resent
    assert idle.sent == []
    assert {m.metadata.dst_node_id: P.BACKBONE in m.content for m in messages} == {100: False, 101: True, 102: False}
    assert s.state.traffic.of(2)["bytes_down_resent"] > 0


def test_a_federation_classifier_passes_on_the_checked_class_means_of_each_step():
    # Prepare: client 0 claims counts its task does not have; clients 1 and 2 send sums of mean c
    s = make_strategy(adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
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
    assert s.state.adapter_log[0]["failed"] == [0] and "counts" in s.state.failures[0]["reason"]
    arrays = from_record(second[0].content[P.TASK_ARRAYS])
    theirs = {c: set(from_record(m.content[P.TASK_ARRAYS])["sample_labels"].tolist()) for c, m in enumerate(first)}
    assert set(arrays["known_ids"].tolist()) == theirs[1] | theirs[2]
    means = arrays["known_sums"][:, 0] / arrays["known_counts"]
    by_class = dict(zip(arrays["known_ids"].tolist(), means.tolist()))
    assert {by_class[k] for k in theirs[1]} == {1.0} and {by_class[k] for k in theirs[2]} == {2.0}


def test_under_features_both_a_step_replys_class_sums_are_the_adapted_half_wide():
    # Prepare: summarised features are DIM wide (frozen half, adapted half); the loss's are DIM // 2
    s = make_strategy(adapter_shapes=SHAPES, seed=3, merge={"adapters": "ffa"},
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
    assert [e["failed"] for e in s.state.adapter_log] == [[0], [0]]
    assert f"not (2, {DIM // 2}) finite floats" in s.state.failures[0]["reason"]
    assert [e["trainers"] for e in s.state.adapter_log] == [2, 2]
