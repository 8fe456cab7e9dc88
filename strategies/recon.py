"""Flower strategy that deals the plan's tasks to clients and merges their class statistics."""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrecon import protocol as P
from fedrecon.plan import Arrival, Plan
from fedrecon.stats import ClassStats, StatsSpec
from strategies.policies import make_policy
from strategies.validation import PayloadError, check_update


def message_bytes(messages) -> int:
    """Serialized size of the messages' contents, as Flower puts them on the wire."""
    return sum(recorddict_to_proto(m.content).ByteSize() for m in messages)


def to_record(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


class ReconStrategy(Strategy):
    """Federated reconnaissance (Hendryx et al., 2021): clients learn new classes task
    by task and send class statistics, which the server merges by a policy.

    The server is the clock: each round it sends each client whose task arrives
    that round the task's classes and sample indices. Clients are addressed by
    partition id, learned once through an ``identify`` query.

    Parameters
    ----------
    plan : Plan
        Which client learns which classes in which round.
    policy : str
        Name of the prototype merge policy (``merge.prototypes``).
    task_config : dict
        Flat settings every task message carries (dataset, backbone, device).
    backbone : dict of ndarray
        Frozen backbone weights, sent with a client's first task.
    dim : int
        Feature size of the backbone.
    node_wait : float
        Seconds to wait for all clients to connect.
    """

    def __init__(self, plan: Plan, policy: str, task_config: dict, backbone: dict, dim: int, node_wait: float = 300.0):
        self.plan = plan
        self.policy_name = policy
        self.policy = make_policy(policy)
        self.task_config = task_config
        self.backbone = to_record(backbone)
        self.dim = dim
        # The statistics the head needs travel in the task config; replies must match.
        self.spec = StatsSpec.from_config(task_config)
        self.node_wait = node_wait
        self.stats = ClassStats.empty(dim)
        self.nodes: dict[int, int] = {}
        self.has_backbone: set[int] = set()
        self.pending: dict[int, Arrival] = {}
        self.traffic: dict[int, dict[str, int]] = {}
        self.failures: list[dict] = []

    def summary(self) -> None:
        log(INFO, "\t├── Prototype merge policy: %s", self.policy_name)
        log(INFO, "\t├── Clients: %d, rounds: %d, tasks: %d", self.plan.clients, self.plan.rounds, len(self.plan.arrivals))
        log(INFO, "\t└── Backbone: %s (%d-d features)", self.task_config["backbone"], self.dim)

    def identify(self, grid: Grid) -> None:
        """Map partition ids to node ids (once), waiting for every client to connect."""
        if self.nodes:
            return
        deadline = time.monotonic() + self.node_wait
        while len(node_ids := list(grid.get_node_ids())) < self.plan.clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(node_ids)} of {self.plan.clients} clients connected in {self.node_wait:.0f} s")
            time.sleep(0.5)
        query = [Message(RecordDict(), dst_node_id=n, message_type=f"{MessageType.QUERY}.{P.IDENTIFY}") for n in node_ids]
        for reply in grid.send_and_receive(query, timeout=self.node_wait):
            if not reply.has_error():
                pid = int(reply.content[P.IDENTITY]["partition_id"])
                self.nodes[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(self.plan.clients)) - set(self.nodes))
        if missing:
            raise RuntimeError(f"clients with partition ids {missing} did not identify themselves")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        self.identify(grid)
        messages = []
        self.pending = {}
        for arrival in self.plan.arrivals_at(server_round):
            task = ConfigRecord({**self.task_config, "round": server_round, "task": arrival.task})
            content = RecordDict({
                P.TASK_CONFIG: task,
                P.TASK_ARRAYS: to_record({"sample_index": arrival.sample_index, "sample_labels": arrival.sample_labels}),
            })
            if arrival.client not in self.has_backbone:
                content[P.BACKBONE] = self.backbone
            node = self.nodes[arrival.client]
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
            self.pending[node] = arrival
        self.traffic[server_round] = {"bytes_down": message_bytes(messages), "bytes_up": 0}
        return messages

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.traffic[server_round]["bytes_up"] = message_bytes(r for r in replies if not r.has_error())
        updates = []
        for reply in replies:
            arrival = self.pending.pop(reply.metadata.src_node_id, None)
            if arrival is None:
                continue
            try:
                if reply.has_error():
                    raise PayloadError(f"client error {reply.error.code}: {reply.error.reason}")
                updates.append(check_update(from_record(reply.content[P.STATS]), arrival, self.dim, self.spec))
            except (PayloadError, KeyError) as exc:
                self._fail(server_round, arrival, str(exc))
                continue
            self.has_backbone.add(arrival.client)
        for arrival in self.pending.values():
            self._fail(server_round, arrival, "no reply before the timeout")
        self.pending = {}
        self.stats = self.policy.merge(self.stats, updates)
        metrics = MetricRecord({"updates": len(updates), "classes": len(self.stats)})
        return to_record(self.stats.to_arrays()), metrics

    def _fail(self, server_round: int, arrival: Arrival, reason: str) -> None:
        log(WARNING, "round %d: client %d task %d rejected: %s", server_round, arrival.client, arrival.task, reason)
        self.failures.append({"round": server_round, "client": arrival.client, "task": arrival.task, "reason": reason})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        return []  # evaluation runs on the server (evaluation.where: server)

    def aggregate_evaluate(self, server_round: int, replies) -> MetricRecord | None:
        return None
