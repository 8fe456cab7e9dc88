"""Secure aggregation's phases: the server learns only each round's sum of the clients' statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log

from fedrecon import protocol as P
from fedrecon.plan.records import merge_arrivals
from fedrecon.secagg.layout import Layout
from fedrecon.secagg.protocol import NotEnough, ServerRound
from fedrecon.secagg.ring import Ring128, decode
from strategies.rounds import Outbox, RoundWork
from strategies.sites import checked_site_sum, fold_site_sum, site_classes
from strategies.state import ServerState
from strategies.tasks import TaskMessages
from strategies.validation import PayloadError, check_update

# SecAgg+ (Bell et al. 2020; fedrecon.secagg.protocol), in four phases a round: keys
# (``query.secagg_keys``), shares (``query.secagg_shares``), the task messages, answered
# with each client's statistics masked in the round's layout instead of in the clear, and
# unmask (``query.secagg_unmask``), after which the round's sum is checked (as one reply
# for the union of the survivors' tasks) and folded in. A client that drops at any step
# has its task retried; fewer survivors than the threshold reveal nothing and every task
# of the round is retried. Policies must need only the round's sum (the scenario check
# refuses the others); adapter updates (``ffa``, ``fedavg``) are summed weighted, beside
# the statistics.

KEYS = f"{MessageType.QUERY}.{P.SECAGG_KEYS}"
SHARES = f"{MessageType.QUERY}.{P.SECAGG_SHARES}"
UNMASK = f"{MessageType.QUERY}.{P.SECAGG_UNMASK}"


def round_threshold(fraction: float, clients: int) -> int:
    """How many of a round's ``clients`` must report for its sum to be unmasked (at least 2)."""
    return min(clients, max(2, math.ceil(fraction * clients)))


@dataclass
class SecureSum:
    """A round's secure sum under way (``RoundWork.secure``)."""

    server: ServerRound
    layout: Layout | None = None
    relayed: dict[int, dict[int, bytes]] = field(default_factory=dict)
    offers: dict[int, str] = field(default_factory=dict)  # sites: each survivor's task id ("" nothing new)


def ask(state: ServerState, work: RoundWork, label: str, clients: list[int], message_type: str, records: dict,
        config: dict | None = None) -> Outbox:
    outbox = Outbox(label, [])
    for client in clients:
        node = state.nodes.node(client)
        content = RecordDict({P.SECAGG: ConfigRecord({"round": work.number, **(config or {})}), **records})
        outbox.messages.append(Message(content, dst_node_id=node, message_type=message_type))
        outbox.to[node] = client
    return outbox


def answers(state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message], step: str,
            drop: bool = True) -> dict[int, Message]:
    """The step's replies by client; a client that did not answer (or answered with an
    error) drops out of the round, its task retried."""
    got = {outbox.to[node]: reply for node, reply in outbox.answers(replies).items() if not reply.has_error()}
    for client in outbox.to.values():
        if client not in got and drop:
            leave(state, work, client, f"secure aggregation: no answer to the {step}")
    return got


def leave(state: ServerState, work: RoundWork, client: int, reason: str) -> None:
    """A client leaves the round's sum; its task waits for a later round."""
    work.drop(state, client, reason)
    if work.secure is not None:
        work.secure.server.keys.pop(client, None)


def abort(state: ServerState, work: RoundWork, reason: str) -> None:
    """Nothing of the round is revealed: every task of it is retried."""
    log(WARNING, "round %d: secure aggregation aborted: %s", work.number, reason)
    for client in list(work.tasks):
        leave(state, work, client, f"secure aggregation aborted: {reason}")
    work.secure = None


# What a SecAgg+ sum's messages carry, read and written the same for every sum of a round
# (the statistics' here, the unknown threshold's counts in strategies/secure_counts.py).

def public_keys(reply: Message) -> tuple[bytes, bytes] | None:
    """A key advertisement's two 32-byte public keys (None: malformed)."""
    keys = reply.content[P.SECAGG]
    c, s = bytes(keys["c"]), bytes(keys["s"])
    return (c, s) if len(c) == 32 and len(s) == 32 else None


def peers_record(server: ServerRound) -> ConfigRecord:
    """Every advertised client's two public keys, for the share exchange."""
    return ConfigRecord({str(c): k[0] + k[1] for c, k in server.keys.items()})


def sent_shares(reply: Message) -> dict[int, bytes]:
    """A client's encrypted shares, by holder."""
    return {int(k): bytes(v) for k, v in reply.content[P.SHARES].items()}


def unmask_config(server: ServerRound) -> dict:
    """Who survived (sent a masked input) and who dropped after sharing."""
    survivors = sorted(server.masked)
    return {"survivors": survivors, "dropped": [c for c in server.shared if c not in server.masked]}


def revealed_shares(reply: Message) -> dict[str, dict[int, int]]:
    """An unmasking answer's shares: ``b`` of the survivors' self-mask seeds, ``s`` of the dropped clients' keys."""
    shares = reply.content[P.SHARES]
    return {part: {int(k.split(":")[1]): int.from_bytes(bytes(v), "big") for k, v in shares.items()
                   if k.startswith(part + ":")} for part in ("b", "s")}


def masked_bytes(reply: Message) -> bytes:
    """A reply's masked vector as bytes (empty: none), 16 a value."""
    record = reply.content[P.MASKED] if P.MASKED in reply.content else None
    return record["masked"].numpy().tobytes() if record is not None and "masked" in record else b""


class SecureKeys:
    """Every client with a task this round advertises two public keys."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def describe(self) -> str:
        return f"secure aggregation: threshold {self.threshold} of a round's clients"

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        return 1 if work.tasks else 0

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        return ask(state, work, "secure sum: keys", sorted(work.tasks), KEYS, {})

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        n = len(outbox.to)
        work.secure = SecureSum(ServerRound(work.number, round_threshold(self.threshold, n)))
        for client, reply in answers(state, work, outbox, replies, "key advertisement").items():
            keys = public_keys(reply)
            if keys is not None:
                work.secure.server.keys[client] = keys
            else:
                leave(state, work, client, "secure aggregation: malformed public keys")
        try:
            work.secure.server.require(len(work.secure.server.keys), "advertised keys")
        except NotEnough as exc:
            abort(state, work, str(exc))
        return True


class SecureShares:
    """The clients' encrypted shares, relayed by the server; then the round's layout is fixed."""

    def describe(self) -> str:
        return "secure aggregation: shares relayed"

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        return 1 if work.secure is not None else 0

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        server = work.secure.server
        return ask(state, work, "secure sum: shares", sorted(server.keys), SHARES, {P.PEERS: peers_record(server)},
                   {"threshold": work.secure.server.threshold})

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        sent = {c: sent_shares(r) for c, r in answers(state, work, outbox, replies, "share exchange").items()}
        try:
            work.secure.relayed = work.secure.server.relay(sent)
        except NotEnough as exc:
            abort(state, work, str(exc))
            return True
        for client in list(work.tasks):
            if client not in work.secure.server.shared:
                leave(state, work, client, "secure aggregation: shares missing or incomplete")
        classes = site_classes(state) if state.sites is not None else \
            sorted({c for arrival, _ in work.tasks.values() for c in arrival.classes})
        factors = ()
        adapters = state.adapters
        if adapters is not None and adapters.merges:
            factors = tuple((k, tuple(v.shape)) for k, v in sorted(adapters.state.items()) if k[-1] in adapters.policy.replies)
        work.secure.layout = Layout(tuple(classes), state.dim, state.spec.second_moment, state.spec.random_features, factors)
        return True


class MaskedTasks:
    """The task messages with the round's layout and each client's relayed shares; each
    survivor's masked vector is kept, nothing is folded before the sum is unmasked."""

    def __init__(self, messages: TaskMessages):
        self.messages = messages

    def describe(self) -> str:
        return self.messages.learning.describe()

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        return 1 if work.secure is not None else 0

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        secure = work.secure
        config = {"round": work.number, "layout": secure.layout.to_json(), "survivors": list(secure.server.shared)}

        def records(client: int) -> dict:
            shares = {str(u): ct for u, ct in secure.relayed.get(client, {}).items()}
            return {P.SECAGG: ConfigRecord(config), P.SHARES: ConfigRecord(shares)}

        # each of at least ``threshold`` summed clients adds its share of the noise
        std = state.budget.std(secure.server.threshold) if state.budget is not None else None
        return self.messages.build(state, work, std, records)

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        if outbox.messages and state.budget is not None:
            state.budget.release()  # what the clients sent was noised for this release
        size, masked = 16 * work.secure.layout.size(), work.secure.server.masked
        for node, reply in outbox.answers(replies).items():
            arrival, _ = outbox.to[node]
            if reply.has_error():
                leave(state, work, arrival.client, f"client error {reply.error.code}: {reply.error.reason}")
                continue
            data = masked_bytes(reply)
            if not data and P.SITE_TASK in reply.content and "error" in reply.content[P.SITE_TASK]:
                leave(state, work, arrival.client, f"site data: {reply.content[P.SITE_TASK]['error']}")
                continue
            if len(data) != size:
                leave(state, work, arrival.client, f"masked statistics of {len(data)} bytes, not the layout's {size}")
                continue
            masked[arrival.client] = Ring128.from_bytes(data)
            if state.sites is not None:
                work.secure.offers[arrival.client] = str(reply.content[P.SITE_TASK]["task"]) \
                    if P.SITE_TASK in reply.content else ""
        for arrival, _ in list(outbox.to.values()):
            if arrival.client not in masked:
                leave(state, work, arrival.client, "no masked statistics before the timeout")
        return True


class Unmask:
    """The survivors' shares unmask the round's sum, which is checked as one reply for
    all their tasks and folded in."""

    def describe(self) -> str:
        return "secure aggregation: the round's sum unmasked"

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        return 1 if work.secure is not None and work.secure.server.masked else 0

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        config = unmask_config(work.secure.server)
        return ask(state, work, "secure sum: unmask", config["survivors"], UNMASK, {}, config)

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        secure = work.secure
        reveals = {}
        for client, reply in answers(state, work, outbox, replies, "unmasking", drop=False).items():
            reveals[client] = revealed_shares(reply)
        survivors = sorted(secure.server.masked)
        try:
            total = decode(secure.server.unmask(reveals, secure.layout.size()))
            if state.sites is not None:  # the classes the sum holds, as the vocabulary numbers them
                every = site_classes(state) if state.budget is not None else None  # noised: every class
                arrays, factor_sums, weight = secure.layout.read(total, every)
                update = checked_site_sum(state, arrays)
            else:
                union = merge_arrivals([work.tasks[c][0] for c in survivors], work.number)
                arrays, factor_sums, weight = secure.layout.read(total, union.classes)
                update = check_update(arrays, union, state.dim, state.spec, noisy=state.budget is not None)
        except (NotEnough, PayloadError, ValueError) as exc:
            abort(state, work, f"the round's sum is not revealed: {exc}" if isinstance(exc, NotEnough)
                  else f"the round's secure sum fails its checks: {exc}")
            return True
        if state.adapters is not None and weight > 0:
            state.adapters.merge([{k: (v / weight).astype(np.float32) for k, v in factor_sums.items()}], [1.0])
        if state.sites is not None:
            fold_site_sum(state, work.number, update, {c: secure.offers.get(c, "") for c in survivors},
                          secure.server.threshold)
        else:
            state.stats = state.policy.merge(state.stats, [update])
        for client in survivors:
            state.accepted(client, work.tasks[client][0])
        work.secure = None
        return True
