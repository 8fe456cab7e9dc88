"""The server's state between rounds, and the two things that happen to a client's task."""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from fedrecon import protocol as P
from fedrecon.learning.adapter_task import AdapterServer
from fedrecon.learning.evaluate import scored_heads
from fedrecon.learning.finetune_model import IDS
from fedrecon.learning.heads import head_spec
from fedrecon.learning.stats import ClassStats
from fedrecon.plan.records import Arrival, Plan
from fedrecon.scenario import Scenario
from strategies.budget import PrivacyBudget
from strategies.faults import RetryBook, Waiting
from strategies.nodes import Nodes
from strategies.site_book import SiteBook
from fedrecon.learning.prototype_merges import is_per_client, make_policy, policy_state, restore_policy
from strategies.traffic import Traffic

# the records a message's setup consists of (fedrecon.protocol): a re-sent setup counts their bytes
SETUP_RECORDS = (P.SETUP, P.BACKBONE, P.FOR_CLIENT)


class ServerState:
    """Everything the server holds between rounds, one object for every kind of run.

    The round's phases (:mod:`strategies.phases`) build their messages from it and
    absorb their replies into it; nothing else changes it. What the federation learned:
    the merged statistics ``stats`` (and each client's ``own`` under a per-client
    policy), the merged ``adapters`` or None, the ``fedavg_finetune`` ``model`` or None.
    How the run goes: the node directory, the retry book, the failures, the tasks each
    client had accepted (``learned``: a client's adapter schedule counts them), the
    bytes each round moved, the privacy budget, the clients' evaluation counts and the
    adapter steps' log.

    Parameters
    ----------
    plan, scenario : the run's plan and scenario.
    nodes : Nodes
        The node directory (partition ids to node ids, who holds the setup).
    dim : int
        Feature size of the backbone.
    adapter_shapes : dict or None
        (out, fan_in) of each adapted layer when the scenario trains adapters.
    model : dict or None
        ``fedavg_finetune``: the global model before any task.
    """

    def __init__(self, plan: Plan, scenario: Scenario, nodes: Nodes, dim: int, adapter_shapes: dict | None = None,
                 model: dict | None = None):
        self.plan, self.scenario, self.dim, self.nodes = plan, scenario, dim, nodes
        self.policy = make_policy(scenario.merge.prototypes)
        self.spec = head_spec(scenario.merge, scenario.seed)  # replies must carry exactly what the head needs
        self.stats = ClassStats.empty(dim)
        self.own: dict[int, ClassStats] | None = {} if is_per_client(self.policy) else None
        active = scenario.adapters.active and adapter_shapes
        self.adapters = AdapterServer(adapter_shapes, scenario) if active else None
        self.model = dict(model) if model is not None else None
        self.budget = PrivacyBudget(scenario, plan) if scenario.privacy.dp is not None else None
        # the head of the merged statistics, built once a round for every reader: the
        # threshold phase and the server's scoring (which passes it to its Evaluator)
        self.heads = scored_heads(scenario, noisy=self.budget is not None)
        self.traffic = Traffic()
        self.book = RetryBook(scenario.faults.retries)
        self.failures: list[dict] = []
        self.learned: dict[int, int] = {}
        # each client's accepted training samples, (index, label) pairs: the threshold
        # exchange asks a client to score exactly these (strategies.unknown_threshold)
        self.trained: dict[int, list[tuple[int, int]]] = {}
        self.unknown: dict[int, dict] = {}  # round -> threshold, quantile, samples, clients, complete
        self.client_eval: dict[int, dict] = {}  # round -> correct, samples, clients, failures
        self.adapter_log: list[dict] = []  # one entry an adapter step: round, step, trainers, loss, failed
        # sites: the run's token, class names, each site's accepted tasks and model version
        self.sites = SiteBook(scenario.sites.classes) if scenario.sites is not None else None

    # --- what happens to a task ---------------------------------------------------------------

    def accepted(self, client: int, arrival: Arrival) -> None:
        """A task of ``client`` was folded in: its node holds the setup, it counts one
        task more, and its samples are among those the client learned."""
        self.nodes.delivered(client)
        self.learned[client] = self.learned.get(client, 0) + 1
        pairs = zip(arrival.sample_index.tolist(), arrival.sample_labels.tolist())
        self.trained.setdefault(client, []).extend(pairs)

    def fail(self, server_round: int, arrival: Arrival, reason: str, parts: list[Waiting] = ()) -> None:
        """A task was rejected or lost: it waits in the retry book (or is lost after its tries)."""
        log(WARNING, "round %d: client %d task %d rejected: %s", server_round, arrival.client, arrival.task, reason)
        # the node may have lost its setup (a restart under the same id): the next message
        # brings it again; a node only assumed to be this client's is asked who it is
        self.nodes.failed(arrival.client)
        self.failures.append({"round": server_round, "client": arrival.client, "task": arrival.task, "reason": reason})
        self.book.failed(list(parts), server_round, reason)

    # --- what a round moved ---------------------------------------------------------------------

    def sent(self, server_round: int, messages: list[Message]) -> None:
        """Count messages going out; a setup sent again to a client (its node lost it) counts apart too."""
        self.traffic.sent(server_round, messages)
        for message in messages:
            if P.SETUP in message.content:
                client = int(message.content[P.FOR_CLIENT]["partition_id"])
                if self.nodes.setup_sent(client):
                    self.traffic.resent(server_round, self.traffic.part_bytes(message, SETUP_RECORDS))

    def received(self, server_round: int, replies: list[Message]) -> None:
        self.traffic.received(server_round, replies)

    def active(self, server_round: int) -> bool:
        """Whether ``server_round`` did anything: a round of the plan, or a later one
        that offered failed tasks again."""
        return server_round <= self.plan.rounds or bool(self.traffic.of(server_round)["bytes_down"])

    def classes_learned(self) -> int:
        return len(self.model[IDS]) if self.model is not None else len(self.stats)

    def client_accuracy(self, server_round: int) -> float | None:
        """Accuracy from the clients' counts (weighted by their samples), None if not evaluated."""
        totals = self.client_eval.get(server_round)
        if not totals or not totals["samples"]:
            return None
        return totals["correct"] / totals["samples"]

    # --- checkpoint ------------------------------------------------------------------------------

    def state(self) -> dict:
        """What a resumed run needs (JSON-able; statistics and :meth:`model_arrays` apart)."""
        return {
            "traffic": self.traffic.state(),
            "failures": self.failures,
            "learned": {str(c): k for c, k in self.learned.items()},
            "trained": {str(c): [list(p) for p in pairs] for c, pairs in self.trained.items()},
            "unknown": {str(r): u for r, u in self.unknown.items()},
            "book": self.book.state(),
            "nodes": self.nodes.state(),
            "client_eval": {str(r): t for r, t in self.client_eval.items()},
            "policy": policy_state(self.policy),
            "adapter_version": self.adapters.version if self.adapters is not None else 0,
            "adapter_log": self.adapter_log,
            "releases": self.budget.releases if self.budget is not None else 0,
            **({"sites": self.sites.state()} if self.sites is not None else {}),
        }

    def model_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the server keeps besides the statistics, checkpointed with them: the
        merged adapter's state, or the fedavg_finetune model."""
        if self.model is not None:
            return dict(self.model)
        return dict(self.adapters.state) if self.adapters is not None else {}

    def restore(self, state: dict, stats: ClassStats, model: dict | None = None) -> None:
        """Continue from a checkpoint."""
        self.stats = stats
        self.traffic.restore(state["traffic"])
        self.failures = list(state["failures"])
        self.learned = {int(c): int(k) for c, k in state["learned"].items()}
        self.trained = {int(c): [(int(i), int(y)) for i, y in pairs] for c, pairs in state.get("trained", {}).items()}
        self.unknown = {int(r): u for r, u in state.get("unknown", {}).items()}
        self.book = RetryBook.from_state(state["book"])
        self.nodes.restore(state["nodes"])
        self.client_eval = {int(r): t for r, t in state["client_eval"].items()}
        restore_policy(self.policy, state.get("policy", {}))
        self.adapter_log = list(state.get("adapter_log", []))
        if self.budget is not None:
            self.budget.releases = int(state["releases"])
        if self.sites is not None:
            self.sites.restore(state["sites"])
        if self.model is not None and model:
            self.model = dict(model)
        elif self.adapters is not None and model:
            self.adapters.state = dict(model)
            self.adapters.version = int(state.get("adapter_version", 0))
