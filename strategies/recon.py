"""Flower strategy that deals the plan's tasks to clients and merges their class statistics."""

from __future__ import annotations

from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrecon import protocol as P
from fedrecon.learning.adapter_task import AdapterServer
from fedrecon.learning.heads import head_spec
from fedrecon.learning.stats import ClassStats, add_stats
from fedrecon.plan.edges import tiers
from fedrecon.plan.records import Arrival, Plan, merge_arrivals
from fedrecon.scenario.model import Scenario
from strategies.budget import PrivacyBudget
from strategies.client_evaluation import ClientEvaluation
from strategies.edges import edge_sums, sums_bytes
from strategies.faults import RetryBook, Waiting, fault_plan
from strategies.nodes import Nodes
from strategies.policies import is_per_client, make_policy, policy_state, restore_policy
from strategies.records import message_bytes, to_record
from strategies.traffic import Traffic
from strategies.validation import (PayloadError, adapter_reply_limit, check_adapter_update, check_drift, check_update,
                                   decode_reply, drift_reply_limit, reply_limit)


class ReconStrategy(ClientEvaluation, Strategy):
    """Federated reconnaissance (Hendryx et al., 2021): clients learn new classes task
    by task and send class statistics, which the server merges by a policy.

    The server is the clock: each round it sends each client whose task arrives that
    round the task's classes and sample indices; the run (``server.run.Run``) calls
    the ``configure_*`` and ``aggregate_*`` steps, which only build messages and read
    replies. Clients are addressed by partition id (:class:`Nodes`).

    Parameters
    ----------
    plan : Plan
        Which client learns which classes in which round.
    scenario : Scenario
        The run's scenario: merge policy, head, retries, faults, adapters, evaluation.
    setup : dict
        The run's setup (:func:`fedrecon.protocol.setup_record`), sent once per node.
    backbone : dict of ndarray
        Backbone weights sent with the setup (empty: installed on every client).
    dim : int
        Feature size of the backbone.
    adapter_shapes : dict or None
        (out, fan_in) of each adapted layer when the scenario trains adapters.
    """

    message_type = MessageType.TRAIN  # the ClientApp's handler of a task

    def __init__(self, plan: Plan, scenario: Scenario, setup: dict[str, str], backbone: dict, dim: int,
                 adapter_shapes: dict | None = None):
        self.plan, self.scenario, self.dim = plan, scenario, dim
        self.policy = make_policy(scenario.merge.prototypes)
        self.spec = head_spec(scenario.merge, scenario.seed)  # replies must carry exactly what the head needs
        self.stats = ClassStats.empty(dim)
        # each client's own statistics, kept only for policies scored per client (local)
        self.own: dict[int, ClassStats] | None = {} if is_per_client(self.policy) else None
        self.setup = ConfigRecord({**setup, "weights": "sent" if backbone else "installed"})
        self.backbone = to_record(backbone)
        # what the setup adds to a message: itself, the backbone (unless the node holds it) and the client it is for
        for_client = {P.SETUP: self.setup, P.FOR_CLIENT: ConfigRecord({"partition_id": 0})}
        self.setup_bytes = {weights: message_bytes([Message(RecordDict({**for_client, **extra}), dst_node_id=0,
                                                            message_type=self.message_type)])
                            for weights, extra in ((True, {P.BACKBONE: self.backbone}), (False, {}))}
        # on a Ray cluster a virtual client's answer and its task may run on different machines:
        # what one machine holds says nothing of the other's, so every setup brings the weights
        weights_claims = setup["backbone_digest"] if scenario.simulation.ray_address is None else ""
        self.nodes = Nodes(plan.clients, setup["digest"], weights_claims, setup["scenario"])
        self.traffic = Traffic()
        self.book = RetryBook(scenario.faults.retries)
        self.faults = fault_plan(scenario.faults.inject, scenario.simulation.timeout)
        self.failures: list[dict] = []
        # tasks of each client the server accepted: a client's adapter schedule counts them
        # (the server says it; a node restarted or resumed would count from 0 itself)
        self.learned: dict[int, int] = {}
        self.pending: dict[int, Arrival] = {}  # node -> the arrival its message carries
        self._tasks: dict[int, tuple[Arrival, list[Waiting]]] = {}
        self._tasks_round = 0
        self._sent: dict[int, list[Waiting]] = {}  # node -> the plan tasks its message carries
        active = scenario.adapters.active and adapter_shapes
        self.adapters = AdapterServer(adapter_shapes, scenario) if active else None
        self._prototypes = 0  # prototypes sent this round (drift sums must match)
        self.budget = PrivacyBudget(scenario, plan) if scenario.privacy.dp is not None else None
        ClientEvaluation.__init__(self)

    def summary(self) -> None:
        log(INFO, "\t├── %s", self.method())
        log(INFO, "\t├── Clients: %d, rounds: %d, tasks: %d", self.plan.clients, self.plan.rounds, len(self.plan.arrivals))
        if self.adapters is not None:
            a = self.scenario.adapters
            log(INFO, "\t├── Adapters: %s, merge %s, rank %d, staleness %s", a.schedule, self.scenario.merge.adapters,
                a.rank, a.staleness)
        log(INFO, "\t└── Backbone: %s (%d-d features)", self.scenario.model.backbone, self.dim)

    def method(self) -> str:
        """What the clients learn and the server merges, for the run's summary."""
        return f"Prototype merge policy: {self.scenario.merge.prototypes}"

    def start(self, *args, **kwargs):
        raise NotImplementedError("server.run.Run drives this strategy: identify and adapter steps are steps of its round")

    # --- a round's task messages ---------------------------------------------------------------

    def tasks_of(self, server_round: int) -> dict[int, tuple[Arrival, list[Waiting]]]:
        """The round's tasks by client, taken once a round: the one due and the failed ones
        waiting, merged (one message a round); a client not connected keeps its tasks."""
        if self._tasks_round == server_round:
            return self._tasks
        due = {a.client: Waiting(a, 0) for a in self.plan.arrivals_at(server_round)}
        tasks = {}
        for client in sorted(set(due) | set(self.book.waiting)):
            parts = self.book.take(client) + ([due[client]] if client in due else [])
            if client not in self.nodes:
                self.book.put_back(parts)
                self.failures.append({"round": server_round, "client": client, "task": parts[-1].arrival.task,
                                      "reason": "not connected"})
                continue
            tasks[client] = (merge_arrivals([p.arrival for p in parts], server_round), parts)
        self._tasks, self._tasks_round = tasks, server_round
        if tasks and self.budget is not None and not self.budget.allows_another():
            for client in list(tasks):
                arrival, parts = tasks.pop(client)
                self.fail(server_round, arrival, f"privacy budget spent (epsilon {self.budget.config.epsilon} after "
                                                 f"{self.budget.releases} rounds): not released", parts)
        return tasks

    def noise_std(self, server_round: int) -> float:
        """Differential privacy: the noise each client adds (its statistics go out one by one)."""
        return self.budget.std(1)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """One message per client with a task due (or a failed task waiting): its classes
        and sample indices, the round's records, and the setup if its node lacks it."""
        self._sent = {}
        messages = []
        records, task_arrays = self.round_records()
        for client, (arrival, parts) in self.tasks_of(server_round).items():
            content = RecordDict({
                P.TASK_CONFIG: ConfigRecord({"round": server_round, "task": arrival.task,
                                             "learned": self.learned.get(client, 0),
                                             **({"dp_std": self.noise_std(server_round)} if self.budget else {}),
                                             **self.faults.get((client, server_round), {})}),
                P.TASK_ARRAYS: to_record({"sample_index": arrival.sample_index, "sample_labels": arrival.sample_labels,
                                          **task_arrays}),
                **records,
                **self.client_records(client, server_round),
            })
            self.add_setup(content, client, server_round)
            node = self.nodes.node(client)
            messages.append(Message(content, dst_node_id=node, message_type=self.message_type))
            self.pending[node] = arrival
            self._sent[node] = parts
        self.traffic.sent(server_round, messages)
        if messages and self.budget is not None:
            self.budget.release()  # what the clients send is noised for this release
        return messages

    def client_records(self, client: int, server_round: int) -> dict:
        """Records a client's own task message carries besides the round's (none here)."""
        return {}

    def round_records(self) -> tuple[dict, dict]:
        """Records every task message of the round carries, and arrays added to its task
        arrays: the global adapter and, under ``compensate``, the prototypes whose drift
        the clients measure."""
        if self.adapters is None:
            return {}, {}
        records = {P.ADAPTER: to_record(self.adapters.payload())} if self.adapters.merges else {}
        arrays = {}
        self._prototypes = 0
        if self.scenario.adapters.staleness == "compensate" and len(self.stats):
            arrays["prototypes"] = self.stats.means()
            self._prototypes = len(self.stats)
        return records, arrays

    def add_setup(self, content: RecordDict, client: int, server_round: int) -> None:
        """Attach the setup for a client whose node does not hold it, with the backbone's
        weights unless the node said it holds them; a re-send is counted apart."""
        if not self.nodes.needs_setup(client):
            return
        content[P.SETUP] = self.setup
        weights = self.nodes.needs_weights(client)
        if weights:
            content[P.BACKBONE] = self.backbone
        content[P.FOR_CLIENT] = ConfigRecord({"partition_id": client})
        if self.nodes.setup_sent(client):
            self.traffic.resent(server_round, self.setup_bytes[weights])

    # --- replies ---------------------------------------------------------------------------------

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.traffic.received(server_round, replies)
        accepted = []
        for reply in replies:
            node = reply.metadata.src_node_id
            arrival = self.pending.pop(node, None)
            if arrival is None:
                continue
            try:
                checked = self.check_reply(reply, arrival)
            except (PayloadError, KeyError) as exc:
                self.fail(server_round, arrival, str(exc), self._sent.get(node, []))
                continue
            # only a reply whose every part passed counts: a rejected one leaves the global state as it was
            accepted.append((arrival, checked))
            self.nodes.delivered(arrival.client)
            self.learned[arrival.client] = self.learned.get(arrival.client, 0) + 1
        for node, arrival in self.pending.items():
            self.fail(server_round, arrival, "no reply before the timeout", self._sent.get(node, []))
        self.pending = {}
        self.fold(server_round, accepted)
        metrics = MetricRecord({"updates": len(accepted), "classes": self.classes_learned()})
        return to_record(self.stats.to_arrays()), metrics

    def check_reply(self, reply: Message, arrival: Arrival) -> tuple:
        """The reply's statistics, adapter factors and drift sums, every part checked
        (raises :class:`PayloadError`)."""
        limit = self.scenario.faults.max_reply_bytes or reply_limit(arrival, self.dim, self.spec)
        update = check_update(decode_reply(reply, limit), arrival, self.dim, self.spec, noisy=self.budget is not None)
        factors = drift = None
        if self.adapters is not None:
            factors = self.check_factors(reply) if P.ADAPTER_UPDATE in reply.content else None
            if P.DRIFT in reply.content and self._prototypes:
                drift = check_drift(decode_reply(reply, drift_reply_limit(self._prototypes, self.dim), P.DRIFT),
                                    self._prototypes, self.dim)
        return update, factors, drift

    def check_factors(self, reply: Message) -> dict | None:
        """The reply's adapter update, refused unread when too large, then checked
        (None: empty, the client did not train; raises :class:`PayloadError`)."""
        a, rank = self.adapters, self.scenario.adapters.rank
        limit = adapter_reply_limit(a.shapes, rank, a.policy.replies)
        return check_adapter_update(decode_reply(reply, limit, P.ADAPTER_UPDATE), a.shapes, rank, a.policy.replies)

    def fold(self, server_round: int, accepted: list[tuple[Arrival, tuple]]) -> None:
        """Merge a round's checked replies into the global state (none: it stays bit for bit)."""
        updates, factors, weights, drifts = [], [], [], []
        # in the clients' order, not the replies': float addition is not associative, and a
        # run's result must not depend on which reply came first
        accepted = sorted(accepted, key=lambda item: (item[0].client, item[0].task))
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
        edges = tiers(self.scenario.clients)
        if updates and edges > 1:  # each edge sums its clients' replies, the top tier adds the edges' sums
            updates = edge_sums([(a.client, u) for (a, _), u in zip(accepted, updates)], self.plan.clients, edges, self.dim)
            self.traffic.to_top(server_round, sums_bytes(updates))
        if updates:
            self.stats = self.policy.merge(self.stats, updates)

    def classes_learned(self) -> int:
        return len(self.stats)

    def fail(self, server_round: int, arrival: Arrival, reason: str, parts: list[Waiting] = ()) -> None:
        log(WARNING, "round %d: client %d task %d rejected: %s", server_round, arrival.client, arrival.task, reason)
        # the node may have lost its setup (a restart under the same id): the next message
        # brings it again; a node only assumed to be this client's is asked who it is
        self.nodes.failed(arrival.client)
        self.failures.append({"round": server_round, "client": arrival.client, "task": arrival.task, "reason": reason})
        self.book.failed(list(parts), server_round, reason)

    def active(self, server_round: int) -> bool:
        """Whether ``server_round`` did anything: a round of the plan, or a later one
        that offered failed tasks again."""
        return server_round <= self.plan.rounds or bool(self.traffic.of(server_round)["bytes_down"])

    # --- checkpoint ------------------------------------------------------------------------------

    def state(self) -> dict:
        """What a resumed run needs (JSON-able; statistics and :meth:`model_arrays` apart)."""
        return {
            "traffic": self.traffic.state(),
            "failures": self.failures,
            "learned": {str(c): k for c, k in self.learned.items()},
            "book": self.book.state(),
            "nodes": self.nodes.state(),
            "client_eval": self.client_eval_state(),
            "policy": policy_state(self.policy),
            "adapter_version": self.adapters.version if self.adapters is not None else 0,
            "releases": self.budget.releases if self.budget is not None else 0,
        }

    def model_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the server keeps besides the statistics, checkpointed with them: the
        merged adapter's state."""
        return dict(self.adapters.state) if self.adapters is not None else {}

    def restore(self, state: dict, stats: ClassStats, model: dict | None = None) -> None:
        """Continue from a checkpoint."""
        self.stats = stats
        self.traffic.restore(state["traffic"])
        self.failures = list(state["failures"])
        self.learned = {int(c): int(k) for c, k in state["learned"].items()}
        self.book = RetryBook.from_state(state["book"])
        self.nodes.restore(state["nodes"])
        self.restore_client_eval(state["client_eval"])
        restore_policy(self.policy, state.get("policy", {}))
        if self.budget is not None:
            self.budget.releases = int(state["releases"])
        if self.adapters is not None and model:
            self.adapters.state = dict(model)
            self.adapters.version = int(state.get("adapter_version", 0))
