"""Evaluation on the clients (``evaluation.where: clients``): each scores its share."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedrecon import protocol as P
from fedrecon.learning.evaluate import eval_share
from strategies.records import to_record


class ClientEvaluation:
    """The evaluate phase of :class:`strategies.recon.ReconStrategy`.

    Each connected client scores the merged model on its share of the test samples of
    the classes seen so far (:func:`fedrecon.learning.evaluate.eval_share`: every sample
    by exactly one client), and the server adds up the counts.
    """

    def __init__(self):
        self.client_eval: dict[int, dict] = {}  # round -> correct, samples, clients, failures
        self._eval_nodes: dict[int, int] = {}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        self._eval_nodes = {}
        s = self.scenario
        if s.evaluation.where != "clients" or not self.active(server_round):
            return []
        if not s.evaluation.due(server_round, self.plan.rounds):
            return []
        seen = self.plan.classes_seen(server_round)
        messages = []
        # the merged adapter, if any, goes with the model (merge.adapters none: clients use their own)
        adapter = {P.ADAPTER: to_record(self.adapters.payload())} if self.adapters and self.adapters.merges else {}
        for client, node in sorted(self.nodes.ids.items()):
            index, labels = eval_share(self.plan, seen, client, self.plan.clients)
            content = RecordDict({
                P.EVAL_CONFIG: ConfigRecord({"round": server_round}),
                P.EVAL_ARRAYS: to_record({"sample_index": index, "sample_labels": labels}),
                P.MODEL: arrays,
                **adapter,
            })
            self.add_setup(content, client, server_round)
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.EVALUATE))
            self._eval_nodes[node] = client
        self.traffic.sent(server_round, messages)
        self.client_eval[server_round] = {"correct": 0, "samples": 0, "clients": 0, "failures": len(self.nodes.missing())}
        return messages

    def aggregate_evaluate(self, server_round: int, replies) -> MetricRecord | None:
        if not self._eval_nodes:
            return None
        replies = list(replies)
        self.traffic.received(server_round, replies)
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
            self.nodes.delivered(client)
        totals["failures"] += len(self._eval_nodes) - len(answered)
        return MetricRecord(dict(totals))

    def client_accuracy(self, server_round: int) -> float | None:
        """Accuracy from the clients' counts (weighted by their samples), None if not evaluated."""
        totals = self.client_eval.get(server_round)
        if not totals or not totals["samples"]:
            return None
        return totals["correct"] / totals["samples"]

    def client_eval_state(self) -> dict:
        return {str(r): t for r, t in self.client_eval.items()}

    def restore_client_eval(self, state: dict) -> None:
        self.client_eval = {int(r): t for r, t in state.items()}
