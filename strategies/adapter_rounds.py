"""Flower strategy with adapter rounds: the round's trainers first train the adapter together."""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedrecon import protocol as P
from strategies.recon import ReconStrategy, message_bytes, to_record
from strategies.validation import PayloadError


class AdapterRounds(ReconStrategy):
    """ReconStrategy whose task rounds start with ``adapters.rounds`` adapter rounds.

    In a plan round, every client whose task arrives trains the global adapter on the
    task's samples (``train.adapt``: ``adapters.epochs`` each time) and sends its
    factors; the server merges them exactly (``ffa``, ``stack``) or not (``fedavg``),
    and repeats. Then the ordinary task messages go out with the merged adapter, and
    the clients summarise their tasks under it without training. Every statistic
    learned in that round is thus computed under the same global adapter, the one the
    server scores with: a round of several trainers stays exact, where one message per
    task leaves each client's statistics under its own, unmerged adapter.

    A client whose adapter reply fails a check (or does not come) is left out of that
    adapter round's merge; the merged adapter stays as the other replies make it, and
    its task still goes out. Parameters: those of :class:`ReconStrategy`, and
    ``timeout`` (seconds to wait for each adapter round's replies).
    """

    adapt_type = f"{MessageType.TRAIN}.{P.ADAPT}"

    def __init__(self, *args, timeout: float = 600.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.adapters is None or not self.adapters.policy.replies or self.adapters.settings.rounds < 1:
            raise ValueError("AdapterRounds needs adapters.rounds >= 1 and a merge policy that merges (fedavg, ffa, stack)")
        self.timeout = timeout
        self.adapter_log: list[dict] = []  # one entry an adapter round: round, step, trainers, loss, failures

    def method(self) -> str:
        return f"{super().method()}; {self.adapters.settings.rounds} adapter rounds before each task round's statistics"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        if server_round > self.resume_after and self.plan.arrivals_at(server_round):
            self.identify(grid)
            for step in range(self.adapters.settings.rounds):
                if not self._adapter_round(server_round, step, grid):
                    break  # no one trains this round (first_task: later tasks): no more steps
        return super().configure_train(server_round, arrays, config, grid)

    def _adapter_round(self, server_round: int, step: int, grid: Grid) -> bool:
        """Send the merged adapter to the round's trainers, merge what comes back; False
        if every client answered that its schedule does not train this task."""
        due = {a.client: a for a in self.plan.arrivals_at(server_round) if a.client in self.nodes}
        payload = to_record(self.adapters.payload())
        messages, sent = [], {}
        for client, arrival in sorted(due.items()):
            content = RecordDict({
                P.TASK_CONFIG: ConfigRecord({**self.task_config, "round": server_round, "task": arrival.task, "step": step}),
                P.TASK_ARRAYS: to_record({"sample_index": arrival.sample_index, "sample_labels": arrival.sample_labels}),
                P.ADAPTER: payload,
            })
            self._add_backbone(content, client, server_round)
            messages.append(Message(content, dst_node_id=self.nodes[client], message_type=self.adapt_type))
            sent[self.nodes[client]] = arrival
        traffic = self.round_traffic(server_round)
        traffic["bytes_down"] += message_bytes(messages)
        replies = list(grid.send_and_receive(messages, timeout=self.timeout)) if messages else []
        traffic["bytes_up"] += message_bytes(r for r in replies if not r.has_error())
        factors, weights, losses, failed = [], [], [], []
        answered = set()
        for reply in replies:
            arrival = sent.get(reply.metadata.src_node_id)
            if arrival is None:
                continue
            answered.add(reply.metadata.src_node_id)
            try:
                update = self.check_factors(reply)
            except (PayloadError, KeyError) as exc:
                self._left_out(server_round, step, arrival, str(exc), failed)
                continue
            self.has_backbone.add(arrival.client)
            if update is not None:
                factors.append(update)
                weights.append(float(len(arrival.sample_labels)))
                if P.METRICS in reply.content:
                    losses.append(float(reply.content[P.METRICS].get("loss", float("nan"))))
        for node, arrival in sent.items():
            if node not in answered:
                self._left_out(server_round, step, arrival, "no reply before the timeout", failed)
        # staleness is keep here (the scenario check refuses compensate): older statistics stay as they are
        self.adapters.merge(factors, weights)
        self.adapter_log.append({"round": server_round, "step": step + 1, "trainers": len(factors),
                                 "loss": sum(losses) / len(losses) if losses else None, "failed": sorted(failed)})
        log(INFO, "round %d adapter round %d: %d trainers merged", server_round, step + 1, len(factors))
        return bool(factors or failed)

    def _left_out(self, server_round: int, step: int, arrival, reason: str, failed: list[int]) -> None:
        # not a failed task (its task message still goes out): no retry is booked
        log(WARNING, "round %d adapter round %d: client %d left out: %s", server_round, step + 1, arrival.client, reason)
        self.failures.append({"round": server_round, "client": arrival.client, "task": arrival.task,
                              "reason": f"adapter round {step + 1}: {reason}"})
        failed.append(arrival.client)

    def state(self) -> dict:
        return {**super().state(), "adapter_log": self.adapter_log}

    def restore(self, state: dict, stats, done: int, model: dict | None = None) -> None:
        super().restore(state, stats, done, model)
        self.adapter_log = list(state.get("adapter_log", []))
