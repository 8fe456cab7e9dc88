"""Flower strategy with secure aggregation: the server learns only each round's sum."""

from __future__ import annotations

import math
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log

from fedrecon import protocol as P
from fedrecon.plan.records import merge_arrivals
from fedrecon.secagg.layout import Layout
from fedrecon.secagg.protocol import NotEnough, ServerRound
from fedrecon.secagg.ring import Ring128, decode
from strategies.recon import ReconStrategy
from strategies.records import to_record
from strategies.validation import PayloadError, check_update


class SecureRecon(ReconStrategy):
    """ReconStrategy whose rounds sum the clients' statistics under masks (SecAgg+,
    Bell et al. 2020; fedrecon.secagg.protocol).

    A round's exchange, each step a ``configure_*`` that only builds messages and an
    ``aggregate_*`` that only reads replies: keys (``query.secagg_keys``), shares
    (``query.secagg_shares``), the task messages, which the clients answer with their
    statistics masked in the round's layout instead of in the clear, and unmask
    (``query.secagg_unmask``), after which the round's sum is checked (as one reply for the
    union of the survivors' tasks) and folded in. A client that drops at any step has its
    task retried; fewer survivors than the threshold reveal nothing and every task of the
    round is retried. Policies must need only the round's sum (the scenario check refuses
    the others); adapter updates (``ffa``, ``fedavg``) are summed weighted, beside the
    statistics.
    """

    keys_type = f"{MessageType.QUERY}.{P.SECAGG_KEYS}"
    shares_type = f"{MessageType.QUERY}.{P.SECAGG_SHARES}"
    unmask_type = f"{MessageType.QUERY}.{P.SECAGG_UNMASK}"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.secure: ServerRound | None = None
        self.layout: Layout | None = None
        self.relayed: dict[int, dict[int, bytes]] = {}
        self._asked: dict[int, int] = {}  # node -> client, for the current step's replies

    def method(self) -> str:
        return f"{super().method()}; secure aggregation (threshold {self.scenario.privacy.threshold} of a round's clients)"

    def noise_std(self, server_round: int) -> float:
        """Differential privacy: each of at least ``threshold`` summed clients adds its share of the noise."""
        return self.budget.std(self.secure.threshold)

    # --- keys -------------------------------------------------------------------------------------

    def configure_keys(self, server_round: int) -> list[Message]:
        """Every client with a task this round advertises two public keys."""
        tasks = self.tasks_of(server_round)
        n = len(tasks)
        self.secure = ServerRound(server_round, min(n, max(2, math.ceil(self.scenario.privacy.threshold * n)))) if n else None
        return self._ask(server_round, sorted(tasks), self.keys_type, {})

    def aggregate_keys(self, server_round: int, replies) -> None:
        if self.secure is None:
            return
        for client, reply in self._answers(server_round, replies, "key advertisement").items():
            keys = reply.content[P.SECAGG]
            c, s = bytes(keys["c"]), bytes(keys["s"])
            if len(c) == 32 and len(s) == 32:
                self.secure.keys[client] = (c, s)
            else:
                self._drop(server_round, client, "secure aggregation: malformed public keys")
        self._enough(server_round, len(self.secure.keys), "advertised keys")

    # --- shares -----------------------------------------------------------------------------------

    def configure_shares(self, server_round: int) -> list[Message]:
        if self.secure is None:
            return []
        peers = ConfigRecord({str(c): k[0] + k[1] for c, k in self.secure.keys.items()})
        config = {"threshold": self.secure.threshold}
        return self._ask(server_round, sorted(self.secure.keys), self.shares_type, {P.PEERS: peers}, config)

    def aggregate_shares(self, server_round: int, replies) -> None:
        if self.secure is None:
            return
        sent = {c: {int(k): bytes(v) for k, v in r.content[P.SHARES].items()}
                for c, r in self._answers(server_round, replies, "share exchange").items()}
        try:
            self.relayed = self.secure.relay(sent)
        except NotEnough as exc:
            self._abort(server_round, str(exc))
            return
        for client in list(self.tasks_of(server_round)):
            if client not in self.secure.shared:
                self._drop(server_round, client, "secure aggregation: shares missing or incomplete")
        tasks = self.tasks_of(server_round)
        classes = sorted({c for arrival, _ in tasks.values() for c in arrival.classes})
        factors = ()
        if self.adapters is not None and self.adapters.merges:
            factors = tuple((k, tuple(v.shape)) for k, v in sorted(self.adapters.state.items()) if k[-1] in self.adapters.policy.replies)
        self.layout = Layout(tuple(classes), self.dim, self.spec.second_moment, self.spec.random_features, factors)

    # --- masked input: the task messages ------------------------------------------------------------

    def client_records(self, client: int, server_round: int) -> dict:
        config = {"round": server_round, "layout": self.layout.to_json(), "survivors": list(self.secure.shared)}
        shares = {str(u): ct for u, ct in self.relayed.get(client, {}).items()}
        return {P.SECAGG: ConfigRecord(config), P.SHARES: ConfigRecord(shares)}

    def aggregate_train(self, server_round: int, replies):
        """Keep each survivor's masked vector; nothing is folded before the sum is unmasked."""
        replies = list(replies)
        self.traffic.received(server_round, replies)
        size = 16 * self.layout.size() if self.layout is not None else 0
        for reply in replies:
            node = reply.metadata.src_node_id
            arrival = self.pending.get(node)
            if arrival is None:
                continue
            if reply.has_error():
                self._drop(server_round, arrival.client, f"client error {reply.error.code}: {reply.error.reason}")
                continue
            record = reply.content[P.MASKED] if P.MASKED in reply.content else None
            data = record["masked"].numpy().tobytes() if record is not None and "masked" in record else b""
            if len(data) != size:
                self._drop(server_round, arrival.client, f"masked statistics of {len(data)} bytes, not the layout's {size}")
                continue
            self.secure.masked[arrival.client] = Ring128.from_bytes(data)
        for node, arrival in list(self.pending.items()):
            if arrival.client not in self.secure.masked:
                self._drop(server_round, arrival.client, "no masked statistics before the timeout")
        self.pending = {}
        return to_record(self.stats.to_arrays()), MetricRecord({"masked": len(self.secure.masked)})

    # --- unmask ---------------------------------------------------------------------------------

    def configure_unmask(self, server_round: int) -> list[Message]:
        if self.secure is None or not self.secure.masked:
            return []
        survivors = sorted(self.secure.masked)
        dropped = [c for c in self.secure.shared if c not in self.secure.masked]
        return self._ask(server_round, survivors, self.unmask_type, {}, {"survivors": survivors, "dropped": dropped})

    def aggregate_unmask(self, server_round: int, replies) -> None:
        """Unmask the survivors' sum, check it as one reply for all their tasks, fold it in."""
        if self.secure is None or not self.secure.masked:
            return
        reveals = {}
        for client, reply in self._answers(server_round, replies, "unmasking", drop=False).items():
            shares = reply.content[P.SHARES]
            reveals[client] = {part: {int(k.split(":")[1]): int.from_bytes(bytes(v), "big") for k, v in shares.items()
                                      if k.startswith(part + ":")} for part in ("b", "s")}
        survivors = sorted(self.secure.masked)
        tasks = self.tasks_of(server_round)
        try:
            total = decode(self.secure.unmask(reveals, self.layout.size()))
            union = merge_arrivals([tasks[c][0] for c in survivors], server_round)
            arrays, factor_sums, weight = self.layout.read(total, union.classes)
            update = check_update(arrays, union, self.dim, self.spec, noisy=self.budget is not None)
        except (NotEnough, PayloadError, ValueError) as exc:
            self._abort(server_round, f"the round's sum is not revealed: {exc}" if isinstance(exc, NotEnough)
                        else f"the round's secure sum fails its checks: {exc}")
            return
        if self.adapters is not None and weight > 0:
            self.adapters.merge([{k: (v / weight).astype(np.float32) for k, v in factor_sums.items()}], [1.0])
        self.stats = self.policy.merge(self.stats, [update])
        for client in survivors:
            self.nodes.delivered(client)
            self.learned[client] = self.learned.get(client, 0) + 1
        self.secure = None

    # --- parts ---------------------------------------------------------------------------------

    def _ask(self, server_round: int, clients: list[int], message_type: str, records: dict,
             config: dict | None = None) -> list[Message]:
        self._asked = {}
        messages = []
        for client in clients:
            node = self.nodes.node(client)
            content = RecordDict({P.SECAGG: ConfigRecord({"round": server_round, **(config or {})}), **records})
            messages.append(Message(content, dst_node_id=node, message_type=message_type))
            self._asked[node] = client
        self.traffic.sent(server_round, messages)
        return messages

    def _answers(self, server_round: int, replies, step: str, drop: bool = True) -> dict[int, Message]:
        """The step's replies by client; a client that did not answer (or answered with an
        error) drops out of the round, its task retried."""
        replies = list(replies)
        self.traffic.received(server_round, replies)
        got = {}
        for reply in replies:
            client = self._asked.get(reply.metadata.src_node_id)
            if client is not None and not reply.has_error():
                got[client] = reply
        for client in self._asked.values():
            if client not in got and drop:
                self._drop(server_round, client, f"secure aggregation: no answer to the {step}")
        return got

    def _drop(self, server_round: int, client: int, reason: str) -> None:
        """A client leaves the round's sum; its task waits for a later round."""
        tasks = self.tasks_of(server_round)
        if client in tasks:
            arrival, parts = tasks.pop(client)
            self.fail(server_round, arrival, reason, parts)
        if self.secure is not None:
            self.secure.keys.pop(client, None)

    def _enough(self, server_round: int, count: int, stage: str) -> None:
        if self.secure is not None:
            try:
                self.secure.require(count, stage)
            except NotEnough as exc:
                self._abort(server_round, str(exc))

    def _abort(self, server_round: int, reason: str) -> None:
        """Nothing of the round is revealed: every task of it is retried."""
        log(WARNING, "round %d: secure aggregation aborted: %s", server_round, reason)
        for client in list(self.tasks_of(server_round)):
            self._drop(server_round, client, f"secure aggregation aborted: {reason}")
        self.secure = None
