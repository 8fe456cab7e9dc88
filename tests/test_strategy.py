"""The server's state and task phase offline, with fake client replies (no Grid, no Flower engine)."""

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrecon import protocol as P
from fedrecon.learning.stats import ClassStats
from fedrecon.plan import make_plan
from fedrecon.protocol import setup_record
from fedrecon.scenario import parse_scenario, scenario_json
from strategies.phases import round_phases, server_state
from strategies.rounds import Outbox, RoundWork, deal
from strategies.setup import NodeSetup
from strategies.tasks import Tasks
from strategies.wire import from_record

DIM = 4


class Offline:
    """The server's state and its round's phases driven by hand: a test builds a phase's
    messages and hands it replies, as the run does through the Grid."""

    def __init__(self, state, phases):
        self.state, self.phases = state, phases
        self.works: dict[int, RoundWork] = {}
        self.outboxes: dict[tuple, Outbox] = {}

    def work(self, server_round: int) -> RoundWork:
        """The round's tasks, dealt once (as the run deals them when the round starts)."""
        if server_round not in self.works:
            self.works[server_round] = deal(self.state, server_round)
        return self.works[server_round]

    def phase(self, kind):
        return next(p for p in self.phases if isinstance(p, kind))

    def build(self, kind, server_round: int, step: int = 0) -> list[Message]:
        outbox = self.phase(kind).build(self.state, self.work(server_round), step)
        self.state.sent(server_round, outbox.messages)
        self.outboxes[kind, server_round] = outbox
        return outbox.messages

    def absorb(self, kind, server_round: int, replies) -> bool:
        replies = list(replies)
        self.state.received(server_round, replies)
        return self.phase(kind).absorb(self.state, self.work(server_round), self.outboxes[kind, server_round], replies)

    def tasks(self, server_round: int) -> list[Message]:
        return self.build(Tasks, server_round)

    def replies(self, server_round: int, replies) -> None:
        self.absorb(Tasks, server_round, replies)


@pytest.fixture(autouse=True)
def identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


@pytest.fixture
def strategy():
    return make_strategy()


def make_strategy(policy: str = "exact", adapter_shapes=None, model=None, **sections) -> Offline:
    """Three clients, 12 classes, 2 a task, 4-d fake features; ``sections`` update the
    scenario's. The nodes are connected as if the identify queries had run: partition c
    is node 100 + c."""
    raw = {"name": "t", "clients": {"count": 3}, "merge": {"prototypes": policy},
           "tasks": {"num_classes": 12, "classes_per_task": 2, "train_shots": 4, "test_shots": 2}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    scenario = parse_scenario(yaml.safe_dump(raw))
    plan = make_plan(scenario, [np.arange(10 * c, 10 * c + 10) for c in range(30)])
    setup = setup_record(scenario_json(scenario), "d1")
    state = server_state(plan, scenario, setup, DIM, adapter_shapes, model)
    state.nodes.ids = {0: 100, 1: 101, 2: 102}
    return Offline(state, round_phases(scenario, NodeSetup(setup, {} if model else {"w": np.ones(3, np.float32)})))


def honest_reply(msg: Message) -> Message:
    arrays = from_record(msg.content[P.TASK_ARRAYS])
    features = np.random.default_rng(int(arrays["sample_index"][0])).normal(size=(len(arrays["sample_labels"]), DIM))
    stats = ClassStats.from_features(arrays["sample_labels"], features)
    return reply_with(msg, stats.to_arrays())


def reply_with(msg: Message, arrays: dict) -> Message:
    content = RecordDict({
        P.STATS: ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
        P.METRICS: MetricRecord({"samples": 1}),
    })
    return Message(content, reply_to=msg)


def test_round_sends_each_client_its_task_and_merges_replies(strategy):
    # Prepare
    messages = strategy.tasks(1)
    # Execute
    strategy.replies(1, [honest_reply(m) for m in messages])
    # Assert
    assert sorted(m.metadata.dst_node_id for m in messages) == [100, 101, 102]
    assert all(P.BACKBONE in m.content and P.SETUP in m.content for m in messages)
    expected = sorted(c for a in strategy.state.plan.arrivals_at(1) for c in a.classes)
    assert strategy.state.stats.ids.tolist() == expected
    assert strategy.state.learned == {0: 1, 1: 1, 2: 1} and not strategy.state.failures
    assert strategy.state.traffic.of(1)["bytes_up"] > 0 and strategy.state.traffic.of(1)["bytes_down"] > 0
    # The setup and backbone go out once per client; a task message then holds only the round and task.
    assert set(messages[0].content[P.TASK_CONFIG]) == {"round", "task", "learned"}
    assert not any(P.BACKBONE in m.content for m in strategy.tasks(2))


def _tamper(kind):
    def bad(arrays):
        a = {k: np.array(v) for k, v in arrays.items()}
        if kind == "nan":
            a["sums"][0, 0] = np.nan
        elif kind == "inf_count":
            a["counts"][0] = np.inf
        elif kind == "negative_count":
            a["counts"][0] = -a["counts"][0]
        elif kind == "zero_count":
            a["counts"][0] = 0.0
        elif kind == "foreign_class":
            a["ids"][0] = 29
        elif kind == "extra_class":
            a = {"ids": np.append(a["ids"], 29), "counts": np.append(a["counts"], 4.0), "sums": np.vstack([a["sums"], np.ones(DIM)])}
        elif kind == "wrong_dim":
            a["sums"] = a["sums"][:, :2]
        elif kind == "float32":
            a["sums"] = a["sums"].astype(np.float32)
        elif kind == "float_ids":
            a["ids"] = a["ids"].astype(np.float64)
        elif kind == "missing_sums":
            del a["sums"]
        elif kind == "duplicate_ids":
            a["ids"][1] = a["ids"][0]
        return a

    return bad


@pytest.mark.parametrize("kind", ["nan", "inf_count", "negative_count", "zero_count", "foreign_class", "extra_class",
                                  "wrong_dim", "float32", "float_ids", "missing_sums", "duplicate_ids"])
def test_bad_reply_is_rejected_and_state_unchanged(strategy, kind):
    # Prepare: one honest round, then a round where client 0 lies.
    first = strategy.tasks(1)
    strategy.replies(1, [honest_reply(m) for m in first])
    before = {k: v.copy() for k, v in strategy.state.stats.to_arrays().items()}
    second = strategy.tasks(2)
    liar = next(m for m in second if m.metadata.dst_node_id == 100)
    honest = honest_reply(liar)
    bad = reply_with(liar, _tamper(kind)(from_record(honest.content[P.STATS])))
    # Execute
    strategy.replies(2, [bad])
    # Assert
    after = strategy.state.stats.to_arrays()
    for key in before:
        assert after[key].tobytes() == before[key].tobytes()
    reasons = {f["client"]: f["reason"] for f in strategy.state.failures}
    assert "no reply" not in reasons[0]


def test_error_and_missing_replies_are_counted_and_backbone_resent(strategy):
    messages = strategy.tasks(1)
    by_node = {m.metadata.dst_node_id: m for m in messages}
    replies = [honest_reply(by_node[100]), Message(Error(code=2, reason="boom"), reply_to=by_node[101])]
    strategy.replies(1, replies)  # node 102 never answers
    assert sorted(f["client"] for f in strategy.state.failures) == [1, 2]
    assert "boom" in strategy.state.failures[0]["reason"] + strategy.state.failures[1]["reason"]
    resent = {m.metadata.dst_node_id: P.BACKBONE in m.content for m in strategy.tasks(2)}
    assert resent == {100: False, 101: True, 102: True}


def test_a_node_that_holds_the_weights_gets_the_setup_without_them_until_it_says_it_lost_them(strategy):
    # Prepare: the identify answers; node 101's machine holds the weights (of digest d1), node 102's others only
    strategy.state.nodes.ids = {}

    def answer(node, pid, weights):
        query = Message(RecordDict(), dst_node_id=node, message_type="query.identify")
        identity = ConfigRecord({"partition_id": pid, "setup_digest": "", "weights": weights})
        reply = Message(RecordDict({P.IDENTITY: identity}), reply_to=query)
        reply.metadata.__dict__["_src_node_id"] = node
        return reply

    strategy.state.nodes.aggregate_identify([answer(100, 0, ""), answer(101, 1, "a0,d1"), answer(102, 2, "d10")])
    # Execute
    first = {m.metadata.dst_node_id: m for m in strategy.tasks(1)}
    # Assert: every node gets the setup (weights named sent); only 101 gets no copy of the weights
    assert {n: P.SETUP in m.content for n, m in first.items()} == {100: True, 101: True, 102: True}
    assert {n: P.BACKBONE in m.content for n, m in first.items()} == {100: True, 101: False, 102: True}
    assert first[101].content[P.SETUP]["weights"] == "sent"
    # node 101 did not find them after all (no setup): the next message brings them
    strategy.replies(1, [Message(Error(code=2, reason="NoSetup: no backbone weights"), reply_to=first[101])])
    again = {m.metadata.dst_node_id: m for m in strategy.tasks(2)}
    assert P.BACKBONE in again[101].content and P.SETUP in again[101].content


def test_local_policy_keeps_each_clients_own_classes_apart():
    # Prepare
    strategy = make_strategy("local")
    # Execute
    for r in (1, 2):
        strategy.replies(r, [honest_reply(m) for m in strategy.tasks(r)])
    # Assert: the server still knows the union, each client only its own.
    assert len(strategy.state.stats) == 12
    for client, own in strategy.state.own.items():
        mine = sorted(c for a in strategy.state.plan.arrivals if a.client == client and a.round <= 2 for c in a.classes)
        assert own.ids.tolist() == mine
    assert make_strategy("exact").state.own is None
