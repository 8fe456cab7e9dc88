"""The unknown-input threshold's exchange: the clients' binned training scores, summed."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedrecon import protocol as P
from fedrecon.learning.prototype_merges import is_per_client, make_policy
from fedrecon.model.unknown import SCORE_BINS, threshold_of, unknown_parameters
from strategies.rounds import Outbox, RoundWork
from strategies.secure_counts import SecureCounts
from strategies.site_model import held_after, model_bytes, update_records
from strategies.setup import NodeSetup
from strategies.state import ServerState
from strategies.validation import PayloadError, decode_reply
from strategies.wire import to_record

QUERY = f"{MessageType.QUERY}.{P.UNKNOWN_SCORES}"
COUNT_LABEL = "unknown-input threshold"


def skipped_because(scenario) -> str | None:
    """Why a run of ``scenario`` makes no threshold exchange (None: it makes one)."""
    if scenario.unknown.quantile is None:
        return "unknown.quantile is null"
    if scenario.merge.method == "fedavg_finetune":
        return "merge.method fedavg_finetune has no merged statistics to score with"
    if is_per_client(make_policy(scenario.merge.prototypes)):
        return f"merge.prototypes {scenario.merge.prototypes}: every client keeps its own head"
    if scenario.clients.edge is not None:
        # the edge's merged model is a part: fedrecon merge adds the edges' statistics, with no clients to count
        return "clients.edge: an edge's run is one part of the federation (give the merged model's at export)"
    if scenario.privacy.dp is not None:
        # the counts describe the clients' samples, and the budget accounts only for the statistics
        return "privacy.dp: the clients' score counts would be a release outside the privacy budget"
    if scenario.adapters.active and scenario.merge.adapters == "none":
        return "merge.adapters none: the clients' features are their own adapters', the server's the frozen backbone's"
    return None


def counts_of(reply: Message, samples: int) -> np.ndarray:
    """A reply's bin counts (sent as the bins that hold a sample, ``bins`` int32, and their
    ``counts`` int64), checked: increasing bins among the ``SCORE_BINS``, positive counts
    adding up to the ``samples`` the client was asked to score (raises :class:`PayloadError`)."""
    arrays = decode_reply(reply, 12 * min(samples, SCORE_BINS) + 1024, P.SCORE_COUNTS)
    bins, counts = arrays.get("bins"), arrays.get("counts")
    if (bins is None or counts is None or bins.dtype != np.int32 or counts.dtype != np.int64
            or bins.ndim != 1 or bins.shape != counts.shape):
        raise PayloadError("score counts must be bins (int32) and counts (int64) of one length")
    if len(bins) and (bins[0] < 0 or bins[-1] >= SCORE_BINS or (np.diff(bins) <= 0).any()):
        raise PayloadError(f"score bins must increase within 0..{SCORE_BINS - 1}")
    if (counts <= 0).any() or int(counts.sum()) != samples:
        raise PayloadError(f"score counts add up to {int(counts.sum())}, not the {samples} samples asked for")
    dense = np.zeros(SCORE_BINS, dtype=np.int64)
    dense[bins] = counts
    return dense


class UnknownThreshold:
    """After a round's statistics are merged (in the rounds ``unknown.rounds`` names), every
    client that learned something scores its accepted training samples under the merged
    model's unknown-input score (:mod:`fedrecon.model.unknown`; each sample left out of its
    class mean) and counts them in the fixed bins; the server adds the counts and keeps the
    ``unknown.quantile`` edge as the round's threshold (``state.unknown``), which an export of that round ships. A client
    that does not answer leaves the round's threshold marked incomplete. Under secure
    aggregation (``secure``, a :class:`strategies.secure_counts.SecureCounts`) the counts
    are masked and only their sum is revealed, in four exchanges instead of one."""

    def __init__(self, setup: NodeSetup, secure: SecureCounts | None = None):
        self.setup, self.secure = setup, secure

    def describe(self) -> str:
        how = "securely summed" if self.secure is not None else "summed"
        return f"unknown-input threshold: the clients' binned training scores, {how}"

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        s = state.scenario
        evaluated = s.evaluation.due(work.number, state.plan.rounds)
        due = state.active(work.number) and s.unknown.due(work.number, state.plan.rounds, evaluated,
                                                          state.adapters is not None)
        # (a scenario skipped_because names has no such phase: round_phases leaves it out)
        if not (due and len(state.stats) > 0 and bool(self.learners(state))):
            return 0
        return self.secure.exchanges if self.secure is not None else 1

    def asked(self, state: ServerState) -> list[int]:
        """The clients to count: those that learned something, connected now."""
        return [c for c in sorted(self.learners(state)) if c in state.nodes.ids]

    @staticmethod
    def learners(state: ServerState) -> dict:
        """The clients that learned something: planned clients' accepted samples, or sites' merged offers."""
        return state.sites.accepted if state.sites is not None else state.trained

    @staticmethod
    def samples(state: ServerState, clients: list[int]) -> int | None:
        """How many samples ``clients`` learned (None: sites under secure aggregation, whose counts are sums)."""
        if state.sites is None:
            return sum(len(state.trained[c]) for c in clients)
        if state.scenario.privacy.secure_aggregation:
            return None
        return sum(state.sites.samples.get(c, 0) for c in clients)

    @staticmethod
    def samples_of(state: ServerState, client: int, server_round: int, deltas: dict) -> dict:
        """What tells a client which samples to score, and with what: a planned client's
        (index, label) pairs, under the score the query carries; a site scores those of its
        own the federation merged, under the merged model it keeps, which the query brings up
        to date (the round's model update, :func:`strategies.site_model.update_records`: no
        merged arrays are sent again, and the update phase then sends the site nothing more)."""
        if state.sites is not None:
            # its offers merged this round are settled first (its ledger learns them at the next task otherwise)
            accepted = list(state.sites.accepted.get(client, []))
            return {P.SITE_CONFIG: ConfigRecord({"run": state.sites.run, "accepted": accepted}),
                    **update_records(state, client, server_round, deltas, threshold=False)}
        index, labels = np.array(state.trained[client], dtype=np.int64).reshape(-1, 2).T
        return {P.EVAL_ARRAYS: to_record({"sample_index": index.copy(), "sample_labels": labels.copy()})}

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        secure = self.secure
        if secure is not None and step != secure.count_step:
            outbox = secure.build(state, work, step, self.asked(state))
        else:
            outbox = self.count_query(state, work)
        outbox.extra["step"] = step
        return outbox

    def count_query(self, state: ServerState, work: RoundWork) -> Outbox:
        # a site computes the score and its classes from the merged model it keeps: the server
        # builds no head for it (it scores nothing itself)
        kind, score = ("", {}) if state.sites is not None else self.score_records(state)
        deltas: dict[int, dict] = {}
        adapters = state.adapters
        adapter = {P.ADAPTER: to_record(adapters.payload())} if adapters is not None and adapters.merges else {}
        clients = self.asked(state) if self.secure is None else list(work.counts.server.shared)
        outbox = Outbox(COUNT_LABEL, [])
        for client in clients:
            node = state.nodes.node(client)
            content = RecordDict({
                P.UNKNOWN_CONFIG: ConfigRecord({"round": work.number, "kind": kind}),
                **score,
                **self.samples_of(state, client, work.number, deltas),
                **adapter,
                **(self.secure.masking(work, client) if self.secure is not None else {}),
            })
            self.setup.attach(content, state.nodes, client)
            outbox.messages.append(Message(content, dst_node_id=node, message_type=QUERY))
            outbox.to[node] = client
        return outbox

    @staticmethod
    def score_records(state: ServerState) -> tuple[str, dict]:
        """The merged model's unknown-input score (its kind, and its arrays and classes as records)."""
        head = state.heads.head(state.stats)  # the one the server's scoring then reuses
        kind, arrays = unknown_parameters(state.stats, head, state.scenario.merge.shrinkage)
        # each client leaves every sample out of its class mean (UnknownScore.training_scores)
        classes = {"ids": state.stats.ids, "counts": state.stats.counts}
        classes = to_record({**classes, "means": state.stats.means()} if kind == "cosine" else classes)
        return kind, {P.UNKNOWN_ARRAYS: to_record(arrays), P.UNKNOWN_CLASSES: classes}

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        if state.sites is not None and outbox.label == COUNT_LABEL:  # the sites took the round's model update
            model_bytes(state, work.number, outbox.messages)
            for node, reply in outbox.answers(replies).items():
                held_after(state, outbox.to[node], reply, work.number)
        if self.secure is not None:
            summed = self.secure.absorb(state, work, outbox.extra["step"], outbox, replies)
            if summed is not None:
                total, survivors = summed
                self.keep(state, work, total, survivors)
            return self.secure.ready(work)  # an aborted sum makes no more exchanges
        total, answered, problems = np.zeros(SCORE_BINS, dtype=np.int64), [], []
        for node, reply in outbox.answers(replies).items():
            client = outbox.to[node]
            try:
                counts = counts_of(reply, self.samples(state, [client]))
            except PayloadError as exc:
                problems.append(f"client {client}: {exc}")
                continue
            total += counts
            answered.append(client)
        self.keep(state, work, total, answered, problems)
        return True

    def keep(self, state: ServerState, work: RoundWork, total: np.ndarray, clients: list[int],
             problems: list[str] = ()) -> None:
        """The round's threshold from the summed ``total`` of ``clients``' counts. A secure
        sum is checked as a whole: whole non-negative counts adding up to the survivors' samples."""
        total = np.asarray(total)
        merged = int(round(float(state.stats.counts.sum())))  # every sample the federation learned
        samples = self.samples(state, clients)
        counts = np.rint(total).astype(np.int64)
        whole = not (counts < 0).any() and np.allclose(total, counts, rtol=0, atol=1e-6)
        if not whole or (int(counts.sum()) != samples if samples is not None else int(counts.sum()) > merged):
            problems = [*problems, f"the summed counts of clients {clients} are not {samples or merged} whole samples"]
            counts, clients = np.zeros(SCORE_BINS, dtype=np.int64), []
        quantile = state.scenario.unknown.quantile
        expected = merged if state.sites is not None else sum(len(p) for p in state.trained.values())
        state.unknown[work.number] = {
            "threshold": threshold_of(counts, quantile), "quantile": quantile, "samples": int(counts.sum()),
            "clients": len(clients), "complete": int(counts.sum()) == expected, "problems": list(problems),
        }
