"""What prototype tasks carry and how their checked replies merge: class statistics, adapter factors, drift."""

from __future__ import annotations

from flwr.app import Message, MessageType

from fedrecon import protocol as P
from fedrecon.learning.stats import ClassStats, add_stats
from fedrecon.plan.edges import tiers
from fedrecon.plan.records import Arrival
from strategies.edges import edge_sums, sums_bytes
from strategies.state import ServerState
from strategies.validation import (adapter_reply_limit, check_adapter_update, check_drift, check_update,
                                   decode_reply, drift_reply_limit, reply_limit)
from strategies.wire import to_record


def checked_factors(state: ServerState, reply: Message) -> dict | None:
    """The reply's adapter update, refused unread when too large, then checked (None:
    empty, the client did not train; raises :class:`PayloadError`)."""
    a, rank = state.adapters, state.scenario.adapters.rank
    limit = adapter_reply_limit(a.shapes, rank, a.policy.replies)
    return check_adapter_update(decode_reply(reply, limit, P.ADAPTER_UPDATE), a.shapes, rank, a.policy.replies)


class Prototypes:
    """Federated reconnaissance (Hendryx et al., 2021): clients learn new classes task
    by task and send class statistics, which the server merges by a policy; under
    adapters, a task message also carries the merged adapter (and, under ``compensate``,
    the prototypes whose drift the clients measure), and a reply its factors."""

    message_type = MessageType.TRAIN  # the ClientApp's handler of a task

    def describe(self) -> str:
        return "prototypes: class statistics merged by a policy"

    def client_records(self, state: ServerState, client: int) -> dict:
        return {}

    def round_records(self, state: ServerState) -> tuple[dict, dict, dict]:
        adapters = state.adapters
        if adapters is None:
            return {}, {}, {"prototypes": 0}
        records = {P.ADAPTER: to_record(adapters.payload())} if adapters.merges else {}
        if state.scenario.adapters.staleness == "compensate" and len(state.stats):
            return records, {"prototypes": state.stats.means()}, {"prototypes": len(state.stats)}
        return records, {}, {"prototypes": 0}

    def check(self, state: ServerState, reply: Message, arrival: Arrival, sent: dict) -> tuple:
        """The reply's statistics, adapter factors and drift sums, every part checked."""
        limit = state.scenario.faults.max_reply_bytes or reply_limit(arrival, state.dim, state.spec)
        update = check_update(decode_reply(reply, limit), arrival, state.dim, state.spec, noisy=state.budget is not None)
        factors = drift = None
        if state.adapters is not None:
            factors = checked_factors(state, reply) if P.ADAPTER_UPDATE in reply.content else None
            prototypes = sent["prototypes"]
            if P.DRIFT in reply.content and prototypes:
                drift = check_drift(decode_reply(reply, drift_reply_limit(prototypes, state.dim), P.DRIFT),
                                    prototypes, state.dim)
        return update, factors, drift

    def fold(self, state: ServerState, server_round: int, accepted: list[tuple[Arrival, tuple]]) -> None:
        updates, factors, weights, drifts = [], [], [], []
        for arrival, (update, factor, drift) in accepted:
            updates.append(update)
            if factor is not None:
                factors.append(factor)
                weights.append(float(len(arrival.sample_labels)))
            if drift is not None:
                drifts.append(drift)
            if state.own is not None:
                state.own[arrival.client] = add_stats([state.own.get(arrival.client, ClassStats.empty(state.dim)), update])
        if state.adapters is not None and state.adapters.merge(factors, weights):
            # statistics merged so far were computed under the adapter that just changed
            state.stats = state.adapters.refresh(state.stats, drifts)
        edges = tiers(state.scenario.clients)
        if updates and edges > 1:  # each edge sums its clients' replies, the top tier adds the edges' sums
            updates = edge_sums([(a.client, u) for (a, _), u in zip(accepted, updates)], state.plan.clients, edges,
                                state.dim)
            state.traffic.to_top(server_round, sums_bytes(updates))
        if updates:
            state.stats = state.policy.merge(state.stats, updates)
