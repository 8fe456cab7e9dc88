"""Failed tasks are offered again and nothing is lost; clients are partition ids, not node ids."""

import numpy as np
from flwr.app import ConfigRecord, Error, Message, RecordDict

from fedrecon import protocol as P
from fedrecon.plan import Arrival, merge_arrivals
from strategies.faults import RetryBook, Waiting
from strategies.wire import from_record
from fedrecon.learning.stats import ClassStats
from tests.test_strategy import DIM, honest_reply, identity, make_strategy, reply_with  # noqa: F401 (fixture)


def sample_reply(msg: Message) -> Message:
    """Honest statistics whose features depend on each sample alone (as a real
    backbone's do), so tasks learned together or apart give the same sums."""
    arrays = from_record(msg.content[P.TASK_ARRAYS])
    features = np.stack([np.random.default_rng(int(i)).normal(size=DIM) for i in arrays["sample_index"]])
    return reply_with(msg, ClassStats.from_features(arrays["sample_labels"], features).to_arrays())


def run_rounds(strategy, rounds: int, spoil=lambda r, msg: sample_reply(msg)) -> None:
    """Rounds of replies from ``spoil``: an honest one, an error, or None (no reply)."""
    for r in range(1, rounds + 1):
        replies = []
        for m in strategy.tasks(r):
            reply = spoil(r, m)
            if reply is not None:
                replies.append(reply)
        strategy.replies(r, replies)


def test_merge_arrivals_keeps_every_sample_of_every_part():
    a = Arrival(1, 0, 0, (3, 5), ((1, 2), (7,)))
    b = Arrival(2, 0, 1, (5, 9), ((8, 9), (4,)), revisits=(5,))
    merged = merge_arrivals([a, b], 2)
    assert merged.classes == (3, 5, 9) and merged.samples == ((1, 2), (7, 8, 9), (4,))
    assert merged.round == 2 and merged.task == 1 and merged.revisits == (5,)


def test_retry_book_gives_up_after_the_limit_and_keeps_tasks_of_absent_clients():
    book = RetryBook(limit=1)
    task = Waiting(Arrival(1, 0, 0, (3,), ((1,),)), 0)
    book.failed([task], 1, "boom")
    again = book.take(0)
    assert again[0].tries == 1 and book.retries == 1
    book.failed(again, 2, "boom")
    assert not book and book.lost[0]["classes"] == [3]
    book.put_back([Waiting(task.arrival, 0)])
    restored = RetryBook.from_state(book.state())
    assert restored.waiting[0][0].arrival == task.arrival and restored.lost == book.lost
    # the run ends with the task still waiting (its client away): it is lost, not forgotten
    restored.give_up(5, "run ended")
    assert not restored and len(restored.lost) == 2 and restored.lost[-1]["reason"] == "run ended"


def test_raising_and_silent_clients_end_with_the_fault_free_statistics():
    # Prepare: client 0 (node 100) raises in round 1, clients 1 and 2 never answer in round 2 (the last).
    clean, faulty = make_strategy(), make_strategy(faults={"retries": 2})
    rounds = clean.state.plan.rounds

    def spoil(r, msg):
        node = msg.metadata.dst_node_id
        if (r, node) == (1, 100):
            return Message(Error(code=2, reason="injected"), reply_to=msg)
        return None if (r, node) in ((2, 101), (rounds, 102)) else sample_reply(msg)

    # Execute: the faulty run goes on for the retry rounds after the plan's last.
    run_rounds(clean, rounds)
    run_rounds(faulty, rounds + 2, spoil)
    # Assert
    np.testing.assert_array_equal(faulty.state.stats.ids, clean.state.stats.ids)
    np.testing.assert_array_equal(faulty.state.stats.counts, clean.state.stats.counts)
    np.testing.assert_allclose(faulty.state.stats.sums, clean.state.stats.sums, rtol=1e-12)
    assert len(faulty.state.failures) == 3 and faulty.state.book.retries == 3 and not faulty.state.book.lost
    assert faulty.state.active(rounds + 1) and not faulty.state.active(rounds + 2)


def test_a_task_is_lost_only_after_its_retries_and_is_counted():
    strategy = make_strategy(faults={"retries": 1})
    run_rounds(strategy, strategy.state.plan.rounds + 1, lambda r, msg: None if msg.metadata.dst_node_id == 102 else sample_reply(msg))
    lost = {c for entry in strategy.state.book.lost for c in entry["classes"]}
    assert lost == {c for a in strategy.state.plan.arrivals if a.client == 2 for c in a.classes}
    assert not set(strategy.state.stats.ids.tolist()) & lost


class RestartingGrid:
    """Node 101 (partition 1) restarts as node 201 with a fresh context."""

    def __init__(self):
        self.online = [100, 101, 102]
        self.queried: list[int] = []

    def get_node_ids(self):
        return list(self.online)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            self.queried.append(m.metadata.dst_node_id)
            who = {"partition_id": 1, "setup_digest": ""}
            reply = Message(RecordDict({P.IDENTITY: ConfigRecord(who)}), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            replies.append(reply)
        return replies


def identify(strategy, grid) -> None:
    """The run's identify step (server.run.Run.identify), after the first round."""
    queries = strategy.state.nodes.configure_identify(grid.get_node_ids())
    strategy.state.nodes.aggregate_identify(grid.send_and_receive(queries) if queries else [])


def test_a_restarted_supernode_is_found_again_by_its_partition_id():
    strategy = make_strategy()
    grid = RestartingGrid()
    identify(strategy, grid)
    first = strategy.tasks(1)
    strategy.replies(1, [honest_reply(m) for m in first])
    # Partition 1's SuperNode is gone in round 2: its task waits, the others go out.
    grid.online = [100, 102]
    identify(strategy, grid)
    second = strategy.tasks(2)
    assert sorted(m.metadata.dst_node_id for m in second) == [100, 102]
    strategy.replies(2, [honest_reply(m) for m in second])
    # It comes back as node 201 (after the plan's last round): asked who it is, it gets
    # its waiting task and, with a fresh context, the setup and backbone again.
    grid.online = [100, 102, 201]
    identify(strategy, grid)
    third = {m.metadata.dst_node_id: m for m in strategy.tasks(3)}
    assert grid.queried == [201] and strategy.state.nodes.node(1) == 201
    assert list(third) == [201] and P.BACKBONE in third[201].content and P.SETUP in third[201].content
    sent = set(from_record(third[201].content[P.TASK_ARRAYS])["sample_labels"].tolist())
    assert sent == {c for a in strategy.state.plan.arrivals_at(2) if a.client == 1 for c in a.classes}
