"""After a site round's merge: every site gets what changed in the merged model, keeps
it as its current model, and scores it on its own test part; the server adds the counts."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedrecon import protocol as P
from strategies.rounds import Outbox, RoundWork
from strategies.secure_counts import SecureCounts
from strategies.setup import NodeSetup
from strategies.state import ServerState
from strategies.wire import to_record

UPDATE = f"{MessageType.QUERY}.{P.SITE_MODEL}"
COUNTS = f"{MessageType.QUERY}.{P.SITE_COUNTS}"
UPDATES = 2  # the updates, then again from its own version for a site that held another than the server thought


def latest_threshold(state: ServerState, server_round: int) -> dict:
    """The unknown threshold the federation chose last (this round or an earlier one), as a
    model update carries it (``unknown``: JSON), so a site's model labels unknown inputs."""
    chosen = [r for r, u in state.unknown.items() if r <= server_round and u.get("threshold") is not None]
    if not chosen:
        return {}
    u = state.unknown[max(chosen)]
    return {"unknown": json.dumps({"threshold": u["threshold"], "chosen_by": "federation", "round": max(chosen),
                                   "quantile": u["quantile"], "samples": u["samples"], "complete": u["complete"]})}


def update_records(state: ServerState, client: int, server_round: int, deltas: dict, evaluate: bool = False,
                   threshold: bool = True) -> dict:
    """A site's model update: the merged statistics changed since the version it holds
    (nothing when it got them earlier this round, with the threshold's query), the names of
    their classes, the latest unknown threshold (``threshold``), the DP count floor.
    ``deltas`` keeps one delta a base version, for every site that holds it."""
    book = state.sites
    base = book.held.get(client, 0)
    if base not in deltas:  # nothing changed after the last round that merged something
        deltas[base] = book.versions.delta(state.stats, min(base, book.versions.latest))
    delta = deltas[base]
    names = [book.names[int(i)] for i in delta["ids"]]
    unknown = latest_threshold(state, server_round) if threshold else {}
    return {P.SITE_MODEL_CONFIG: ConfigRecord({"round": server_round, "base": base, "version": server_round,
                                               "names": names, "evaluate": evaluate, "run": book.run,
                                               "dim": state.dim, "count_floor": book.count_floor(), **unknown}),
            P.SITE_MODEL: to_record(delta)}


def model_bytes(state: ServerState, server_round: int, messages: list[Message]) -> None:
    """Count the model updates' part of ``messages`` in the round's ``bytes_model``."""
    for message in messages:
        state.traffic.model(server_round, state.traffic.part_bytes(message, (P.SITE_MODEL, P.SITE_MODEL_CONFIG)))


def held_after(state: ServerState, client: int, reply: Message, server_round: int) -> int:
    """The version a site's reply says it holds (-1: none said), kept when it is the round's (it took the update)."""
    if reply.has_error() or P.METRICS not in reply.content:
        return -1
    held = int(reply.content[P.METRICS].get("version", -1))
    if held == server_round:
        state.sites.held[client] = held
    return held


class SiteModel:
    """Each connected site receives the merged statistics' rows and shared arrays changed
    since the version it holds (:mod:`fedrecon.learning.stats_delta`; the first time, all
    of them) with the names of their classes; it rebuilds the head as the server would and
    writes its model folder (clients/node_model.py). A site that holds another version than
    the server thought (restarted with an older folder) says which, and gets the update
    from there in a second exchange. In an evaluated round each site then counts its test
    samples the model gets right, in the clear with its update's reply, or under secure
    aggregation (``secure``) as a masked sum of four more exchanges; the server keeps the
    totals as the clients' evaluation (``state.client_eval``)."""

    def __init__(self, setup: NodeSetup, secure: SecureCounts | None = None):
        self.setup, self.secure = setup, secure

    def describe(self) -> str:
        how = "securely summed" if self.secure is not None else "summed"
        return f"sites: the merged model's changes to every site, its test counts {how}"

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        if not len(state.stats):  # no class merged yet: no model to send
            return 0
        return UPDATES + (self.secure.exchanges if self.secure is not None and self.evaluated(state, work) else 0)

    def evaluated(self, state: ServerState, work: RoundWork) -> bool:
        return state.scenario.evaluation.due(work.number, state.plan.rounds)

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        if step < UPDATES:
            outbox = self.updates(state, work, step)
        elif step - UPDATES == self.secure.count_step:
            outbox = self.count_query(state, work)
        else:  # the secure count sum's keys, shares, unmasking: among the sites holding the round's model
            current = [c for c in sorted(state.nodes.ids) if state.sites.held.get(c) == work.number]
            outbox = self.secure.build(state, work, step - UPDATES, current)
        outbox.extra["step"] = step
        return outbox

    def updates(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        evaluate = self.evaluated(state, work) and self.secure is None  # in the clear: counted with the update
        clients = sorted(state.nodes.ids) if step == 0 else work.stale
        outbox = Outbox("sites: model updates" if step == 0 else "sites: model updates again", [])
        deltas: dict[int, dict] = {}  # one delta a base version, for every site that holds it
        for client in clients:
            content = RecordDict(update_records(state, client, work.number, deltas, evaluate))
            self.setup.attach(content, state.nodes, client)
            node = state.nodes.node(client)
            outbox.messages.append(Message(content, dst_node_id=node, message_type=UPDATE))
            outbox.to[node] = client
        return outbox

    def count_query(self, state: ServerState, work: RoundWork) -> Outbox:
        outbox = Outbox("sites: test counts", [])
        for client in list(work.counts.server.shared):
            content = RecordDict({P.SITE_MODEL_CONFIG: ConfigRecord({"round": work.number, "run": state.sites.run,
                                                                "dim": state.dim,
                                                                "count_floor": state.sites.count_floor()}),
                                  **self.secure.masking(work, client)})
            self.setup.attach(content, state.nodes, client)
            node = state.nodes.node(client)
            outbox.messages.append(Message(content, dst_node_id=node, message_type=COUNTS))
            outbox.to[node] = client
        return outbox

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        step = outbox.extra["step"]
        if step >= UPDATES:
            summed = self.secure.absorb(state, work, step - UPDATES, outbox, replies)
            if summed is not None:
                total, survivors = summed
                self.keep(state, work, [total], len(survivors), len(state.nodes.ids) - len(survivors))
            return self.secure.ready(work)
        model_bytes(state, work.number, outbox.messages)
        book, counted, stale = state.sites, [], []
        for node, reply in outbox.answers(replies).items():
            client = outbox.to[node]
            held = held_after(state, client, reply, work.number)
            if held < 0:
                continue
            m = reply.content[P.METRICS]
            if P.SITE_TASK in reply.content and "error" in reply.content[P.SITE_TASK]:
                state.failures.append({"round": work.number, "client": client, "task": -1,
                                       "reason": f"site test data: {reply.content[P.SITE_TASK]['error']}"})
            if held == work.number:
                state.nodes.delivered(client)
                if "correct" in m:
                    counted.append(np.array([float(m["correct"]), float(m["samples"])]))
            elif 0 <= held < work.number and step == 0:
                book.held[client] = held  # the site holds this version: the next update starts there
                stale.append(client)
        if step == 0:
            work.stale = stale
        if self.secure is None and self.evaluated(state, work):
            previous = state.client_eval.get(work.number) if step == 1 else None
            self.keep(state, work, counted, len(counted), 0, previous)
        return step == 0 and bool(stale) or self.secure is not None

    def keep(self, state: ServerState, work: RoundWork, counts: list, clients: int, failures: int,
             previous: dict | None = None) -> None:
        """The round's evaluation from the sites' (or their summed) ``counts`` [correct, samples]."""
        total = np.sum(counts, axis=0) if counts else np.zeros(2)
        correct, samples = (int(round(float(v))) for v in total)
        if not 0 <= correct <= samples:  # a sum that is no count of samples: the round has no accuracy
            correct = samples = clients = 0
        totals = {"correct": correct, "samples": samples, "clients": clients, "failures": failures}
        if previous is not None:
            totals = {k: totals[k] + previous[k] for k in totals}
        state.client_eval[work.number] = totals
