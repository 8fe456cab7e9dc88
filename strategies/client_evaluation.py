"""Evaluation on the clients (``evaluation.where: clients``): each scores its share."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedrecon import protocol as P
from fedrecon.learning.evaluate import eval_share
from strategies.rounds import Outbox, RoundWork
from strategies.setup import NodeSetup
from strategies.state import ServerState
from strategies.wire import to_record


class ClientEvaluation:
    """Each connected client scores the merged model on its share of the test samples of
    the classes seen so far (:func:`fedrecon.learning.evaluate.eval_share`: every sample
    by exactly one client), and the server adds up the counts (``state.client_eval``).
    The merged statistics are put into a record here, when a round is evaluated, and
    once for all its messages."""

    def __init__(self, setup: NodeSetup):
        self.setup = setup

    def describe(self) -> str:
        return "evaluation on the clients"

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        s = state.scenario
        return int(state.active(work.number) and s.evaluation.due(work.number, state.plan.rounds))

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        seen = state.plan.classes_seen(work.number)
        merged = to_record(state.stats.to_arrays())
        # the merged adapter, if any, goes with the model (merge.adapters none: clients use their own)
        adapters = state.adapters
        adapter = {P.ADAPTER: to_record(adapters.payload())} if adapters is not None and adapters.merges else {}
        outbox = Outbox("evaluation on the clients", [], extra={"missing": len(state.nodes.missing())})
        for client, node in sorted(state.nodes.ids.items()):
            index, labels = eval_share(state.plan, seen, client, state.plan.clients)
            content = RecordDict({
                P.EVAL_CONFIG: ConfigRecord({"round": work.number}),
                P.EVAL_ARRAYS: to_record({"sample_index": index, "sample_labels": labels}),
                P.MERGED_STATS: merged,
                **adapter,
            })
            self.setup.attach(content, state.nodes, client)
            outbox.messages.append(Message(content, dst_node_id=node, message_type=MessageType.EVALUATE))
            outbox.to[node] = client
        return outbox

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        totals = {"correct": 0, "samples": 0, "clients": 0, "failures": outbox.extra["missing"]}
        answered = set()
        for node, reply in outbox.answers(replies).items():
            client = outbox.to[node]
            if reply.has_error() or P.METRICS not in reply.content:
                continue
            m = reply.content[P.METRICS]
            correct, samples = int(m.get("correct", -1)), int(m.get("samples", -1))
            if not 0 <= correct <= samples:
                continue
            totals["correct"] += correct
            totals["samples"] += samples
            totals["clients"] += 1
            answered.add(client)
            state.nodes.delivered(client)
        totals["failures"] += len(outbox.to) - len(answered)
        state.client_eval[work.number] = totals
        return True
