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
from fedrecon.adapters import AdapterServer, AdapterSettings
from fedrecon.evaluate import eval_share
from fedrecon.plan import Arrival, Plan, merge_arrivals
from fedrecon.stats import ClassStats, StatsSpec, add_stats
from strategies.faults import RetryBook, Waiting
from strategies.policies import make_policy, policy_state, restore_policy
from strategies.validation import (PayloadError, adapter_reply_limit, check_adapter_update, check_drift, check_update,
                                  decode_reply, reply_limit)


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
    retries : int
        Times a failed task is offered again (with the client's next message).
    faults : dict
        (client, round) -> task-config entries of an injected fault.
    evaluate_on_clients : dict or None
        Settings of client-side evaluation (``evaluation.where: clients``): ``every``
        and the head's settings (``HeadSettings.to_config``); None: the server evaluates.
    max_reply_bytes : int or None
        Replies with more bytes of arrays are rejected unread; None: twice what a
        valid reply to the task holds, plus 1 MB.
    adapter_shapes : dict or None
        (out, fan_in) of each adapted layer when the task config's adapter settings
        (``AdapterSettings.to_config``) train adapters; None: a frozen backbone.
    """

    message_type = MessageType.TRAIN  # the ClientApp's handler of a task

    def __init__(self, plan: Plan, policy: str, task_config: dict, backbone: dict, dim: int, node_wait: float = 300.0,
                 retries: int = 3, faults: dict | None = None, evaluate_on_clients: dict | None = None,
                 max_reply_bytes: int | None = None, adapter_shapes: dict | None = None):
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
        # Each client's own statistics, kept only for policies scored per client (local).
        self.own: dict[int, ClassStats] | None = {} if getattr(self.policy, "per_client", False) else None
        self.nodes: dict[int, int] = {}
        self.has_backbone: set[int] = set()
        self.pending: dict[int, Arrival] = {}
        self.traffic: dict[int, dict[str, int]] = {}
        self.failures: list[dict] = []
        self.book = RetryBook(retries)
        self.faults = faults or {}
        self.evaluate_on_clients = evaluate_on_clients
        self.max_reply_bytes = max_reply_bytes
        self.backbone_bytes = recorddict_to_proto(RecordDict({P.BACKBONE: self.backbone})).ByteSize()
        self.backbone_sent: set[int] = set()  # clients sent the backbone at least once (for resend accounting)
        self.client_eval: dict[int, dict] = {}  # round -> correct, samples, failures
        self.resume_after = 0  # rounds already done before a resume: skipped
        self._sent: dict[int, list[Waiting]] = {}  # node -> the plan tasks its message carries
        self._eval_nodes: dict[int, int] = {}
        settings = AdapterSettings.from_config(task_config)
        self.adapters = AdapterServer(adapter_shapes, settings) if settings.active and adapter_shapes else None
        self._prototypes = 0  # prototypes sent this round (drift sums must match)

    def summary(self) -> None:
        log(INFO, "\t├── %s", self.method())
        log(INFO, "\t├── Clients: %d, rounds: %d, tasks: %d", self.plan.clients, self.plan.rounds, len(self.plan.arrivals))
        if self.adapters is not None:
            a = self.adapters.settings
            log(INFO, "\t├── Adapters: %s, merge %s, rank %d, staleness %s", a.schedule, a.merge, a.rank, a.staleness)
        log(INFO, "\t└── Backbone: %s (%d-d features)", self.task_config["backbone"], self.dim)

    def method(self) -> str:
        """What the clients learn and the server merges, for the run's summary."""
        return f"Prototype merge policy: {self.policy_name}"

    def identify(self, grid: Grid) -> None:
        """Map partition ids to node ids, waiting for every client the first time.

        Later calls re-identify: a node id that disappeared is dropped (its client's
        tasks wait), and an unknown one (a SuperNode that restarted) is asked who it is.
        """
        if not self.nodes:
            deadline = time.monotonic() + self.node_wait
            while len(list(grid.get_node_ids())) < self.plan.clients:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(list(grid.get_node_ids()))} of {self.plan.clients} clients connected in {self.node_wait:.0f} s")
                time.sleep(0.5)
        online = set(grid.get_node_ids())
        for pid, node in list(self.nodes.items()):
            if node not in online:
                log(WARNING, "client %d (node %d) is gone; its tasks wait until it is back", pid, node)
                del self.nodes[pid]
        unknown = sorted(online - set(self.nodes.values()))
        if not unknown:
            return
        query = [Message(RecordDict(), dst_node_id=n, message_type=f"{MessageType.QUERY}.{P.IDENTIFY}") for n in unknown]
        for reply in grid.send_and_receive(query, timeout=self.node_wait):
            if reply.has_error():
                continue
            identity = reply.content[P.IDENTITY]
            pid = int(identity["partition_id"])
            self.nodes[pid] = reply.metadata.src_node_id
            # A node keeps the backbone in its context; a new node or a new run has none.
            if identity.get("backbone_digest", "") == self.task_config.get("backbone_digest"):
                self.has_backbone.add(pid)
            else:
                self.has_backbone.discard(pid)
        if len(self.nodes) < self.plan.clients:
            missing = sorted(set(range(self.plan.clients)) - set(self.nodes))
            log(WARNING, "clients %s are not connected", missing)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        self._sent = {}
        traffic = self.round_traffic(server_round)
        if server_round <= self.resume_after:
            return []  # done before the resume: its result is in the checkpoint
        self.identify(grid)
        due = {a.client: Waiting(a, 0) for a in self.plan.arrivals_at(server_round)}
        messages = []
        records, task_arrays = self._round_records()
        for client in sorted(set(due) | set(self.book.waiting)):
            parts = self.book.take(client) + ([due[client]] if client in due else [])
            if client not in self.nodes:
                self.book.put_back(parts)
                self.failures.append({"round": server_round, "client": client, "task": parts[-1].arrival.task, "reason": "not connected"})
                continue
            # one message a round: a retried task travels merged with the client's new one
            arrival = merge_arrivals([p.arrival for p in parts], server_round)
            task = ConfigRecord({**self.task_config, "round": server_round, "task": arrival.task,
                                 **self.faults.get((client, server_round), {})})
            content = RecordDict({
                P.TASK_CONFIG: task,
                P.TASK_ARRAYS: to_record({"sample_index": arrival.sample_index, "sample_labels": arrival.sample_labels,
                                          **task_arrays}),
                **records,
            })
            self._add_backbone(content, client, server_round)
            node = self.nodes[client]
            messages.append(Message(content, dst_node_id=node, message_type=self.message_type))
            self.pending[node] = arrival
            self._sent[node] = parts
        traffic["bytes_down"] += message_bytes(messages)
        return messages

    def round_traffic(self, server_round: int) -> dict[str, int]:
        """Bytes of the round so far (a subclass may send messages before the tasks')."""
        return self.traffic.setdefault(server_round, {"bytes_down": 0, "bytes_up": 0, "bytes_down_resent": 0})

    def _round_records(self) -> tuple[dict, dict]:
        """Records every task message of the round carries, and arrays added to its task
        arrays: the global adapter and, under ``compensate``, the prototypes whose drift
        the clients measure."""
        if self.adapters is None:
            return {}, {}
        records = {P.ADAPTER: to_record(self.adapters.payload())} if self.adapters.policy.replies else {}
        arrays = {}
        self._prototypes = 0
        if self.adapters.settings.staleness == "compensate" and len(self.stats):
            arrays["prototypes"] = self.stats.means()
            self._prototypes = len(self.stats)
        return records, arrays

    def _adapter_reply(self, reply: Message) -> tuple[dict | None, tuple | None]:
        """The reply's checked adapter factors and drift sums (None: none sent)."""
        if self.adapters is None:
            return None, None
        factors = self.check_factors(reply) if P.ADAPTER_UPDATE in reply.content else None
        drift = None
        if P.DRIFT in reply.content and self._prototypes:
            drift = check_drift(from_record(reply.content[P.DRIFT]), self._prototypes, self.dim)
        return factors, drift

    def check_factors(self, reply: Message) -> dict | None:
        """The reply's adapter update, refused unread when too large, then checked
        (None: empty, the client did not train; raises :class:`PayloadError`)."""
        a = self.adapters
        limit = adapter_reply_limit(a.shapes, a.settings.rank, a.policy.replies)
        return check_adapter_update(decode_reply(reply, limit, P.ADAPTER_UPDATE), a.shapes, a.settings.rank, a.policy.replies)

    def _add_backbone(self, content: RecordDict, client: int, server_round: int) -> None:
        """Attach the backbone for a client that does not hold it; count a re-send apart."""
        if client in self.has_backbone:
            return
        content[P.BACKBONE] = self.backbone
        if client in self.backbone_sent:
            self.round_traffic(server_round)["bytes_down_resent"] += self.backbone_bytes
        self.backbone_sent.add(client)

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.traffic[server_round]["bytes_up"] += message_bytes(r for r in replies if not r.has_error())
        accepted = []
        for reply in replies:
            node = reply.metadata.src_node_id
            arrival = self.pending.pop(node, None)
            if arrival is None:
                continue
            try:
                checked = self.check_reply(reply, arrival)
            except (PayloadError, KeyError) as exc:
                self._fail(server_round, arrival, str(exc), self._sent.get(node, []))
                continue
            # only a reply whose every part passed counts: a rejected one leaves the global state as it was
            accepted.append((arrival, checked))
            self.has_backbone.add(arrival.client)
        for node, arrival in self.pending.items():
            self._fail(server_round, arrival, "no reply before the timeout", self._sent.get(node, []))
        self.pending = {}
        self.fold(accepted)
        metrics = MetricRecord({"updates": len(accepted), "classes": self.classes_learned()})
        return to_record(self.stats.to_arrays()), metrics

    def check_reply(self, reply: Message, arrival: Arrival) -> tuple:
        """The reply's statistics, adapter factors and drift sums, every part checked
        (raises :class:`PayloadError`)."""
        limit = self.max_reply_bytes or reply_limit(arrival, self.dim, self.spec)
        update = check_update(decode_reply(reply, limit), arrival, self.dim, self.spec)
        factor, drift = self._adapter_reply(reply)
        return update, factor, drift

    def fold(self, accepted: list[tuple[Arrival, tuple]]) -> None:
        """Merge a round's checked replies into the global state (none: it stays bit for bit)."""
        updates, factors, weights, drifts = [], [], [], []
        for arrival, (update, factor, drift) in accepted:
            updates.append(update)
            if factor is not None:
                factors.append(factor)
                weights.append(float(len(arrival.sample_labels)))
            if drift is not None:
                drifts.append(drift)
            if self.own is not None:
                self.own[arrival.client] = add_stats([self.own.get(arrival.client, ClassStats.empty(self.dim)), update])
        if self.adapters is not None and self.adapters.merge(factors, weights):
            # statistics merged so far were computed under the adapter that just changed
            self.stats = self.adapters.refresh(self.stats, drifts)
        if updates:
            self.stats = self.policy.merge(self.stats, updates)

    def classes_learned(self) -> int:
        return len(self.stats)

    def _fail(self, server_round: int, arrival: Arrival, reason: str, parts: list[Waiting] = ()) -> None:
        log(WARNING, "round %d: client %d task %d rejected: %s", server_round, arrival.client, arrival.task, reason)
        self.failures.append({"round": server_round, "client": arrival.client, "task": arrival.task, "reason": reason})
        self.book.failed(list(parts), server_round, reason)

    def active(self, server_round: int) -> bool:
        """Whether ``server_round`` did anything: a round of the plan, or a later one
        that offered failed tasks again."""
        return server_round <= self.plan.rounds or bool(self.traffic.get(server_round, {}).get("bytes_down"))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """With ``evaluation.where: clients``: each connected client scores the merged
        model on its share of the test samples of the classes seen so far."""
        self._eval_nodes = {}
        settings = self.evaluate_on_clients
        if settings is None or server_round <= self.resume_after or not self.active(server_round):
            return []
        if not (server_round % settings["every"] == 0 or server_round >= self.plan.rounds):
            return []
        seen = self.plan.classes_seen(server_round)
        messages = []
        # the merged adapter, if any, goes with the model (merge.adapters none: clients use their own)
        adapter = {P.ADAPTER: to_record(self.adapters.payload())} if self.adapters and self.adapters.policy.replies else {}
        for client, node in sorted(self.nodes.items()):
            index, labels = eval_share(self.plan, seen, client, self.plan.clients)
            content = RecordDict({
                P.EVAL_CONFIG: ConfigRecord({**self.task_config, **settings, "round": server_round}),
                P.EVAL_ARRAYS: to_record({"sample_index": index, "sample_labels": labels}),
                P.MODEL: arrays,
                **adapter,
            })
            self._add_backbone(content, client, server_round)
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.EVALUATE))
            self._eval_nodes[node] = client
        self.traffic[server_round]["bytes_down"] += message_bytes(messages)
        self.client_eval[server_round] = {"correct": 0, "samples": 0, "clients": 0, "failures": len(self.plan_clients_missing())}
        return messages

    def plan_clients_missing(self) -> list[int]:
        return sorted(set(range(self.plan.clients)) - set(self.nodes))

    def aggregate_evaluate(self, server_round: int, replies) -> MetricRecord | None:
        if not self._eval_nodes:
            return None
        replies = list(replies)
        self.traffic[server_round]["bytes_up"] += message_bytes(r for r in replies if not r.has_error())
        totals = self.client_eval[server_round]
        answered = set()
        for reply in replies:
            client = self._eval_nodes.get(reply.metadata.src_node_id)
            if client is None or reply.has_error() or P.METRICS not in reply.content:
                continue
            m = reply.content[P.METRICS]
            correct, samples = int(m.get("correct", -1)), int(m.get("samples", -1))
            if not 0 <= correct <= samples:
                continue
            totals["correct"] += correct
            totals["samples"] += samples
            totals["clients"] += 1
            answered.add(client)
            self.has_backbone.add(client)
        totals["failures"] += len(self._eval_nodes) - len(answered)
        return MetricRecord(dict(totals))

    def client_accuracy(self, server_round: int) -> float | None:
        """Accuracy from the clients' counts (weighted by their samples), None if not evaluated."""
        totals = self.client_eval.get(server_round)
        if not totals or not totals["samples"]:
            return None
        return totals["correct"] / totals["samples"]

    # --- checkpoint ---------------------------------------------------------------------------

    def state(self) -> dict:
        """What a resumed run needs (JSON-able, statistics apart as arrays)."""
        return {
            "traffic": {str(r): t for r, t in self.traffic.items()},
            "failures": self.failures,
            "book": self.book.state(),
            "backbone_sent": sorted(self.backbone_sent),
            "client_eval": {str(r): t for r, t in self.client_eval.items()},
            "policy": policy_state(self.policy),
            "adapter_version": self.adapters.version if self.adapters is not None else 0,
        }

    def model_arrays(self) -> dict:
        """Arrays the server keeps besides the statistics, checkpointed with them: the
        merged adapter's state."""
        return dict(self.adapters.state) if self.adapters is not None else {}

    def restore(self, state: dict, stats: ClassStats, done: int, model: dict | None = None) -> None:
        """Continue after round ``done``. Which clients hold the backbone is not restored:
        a new run gives every node a fresh context, so the identify answers say."""
        self.stats = stats
        self.traffic = {int(r): t for r, t in state["traffic"].items()}
        self.failures = list(state["failures"])
        self.book = RetryBook.from_state(state["book"])
        self.backbone_sent = set(state["backbone_sent"])
        self.client_eval = {int(r): t for r, t in state["client_eval"].items()}
        restore_policy(self.policy, state.get("policy", {}))
        if self.adapters is not None and model:
            self.adapters.state = dict(model)
            self.adapters.version = int(state.get("adapter_version", 0))
        self.resume_after = done
