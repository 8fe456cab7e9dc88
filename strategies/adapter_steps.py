"""Flower strategy with adapter steps: the round's trainers first train one adapter together."""

from __future__ import annotations

from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log

from fedrecon import protocol as P
from fedrecon.learning.adapter_task import anyone_trains, known_after, trained_columns
from fedrecon.learning.stats import ClassStats
from strategies.recon import ReconStrategy
from strategies.records import to_record
from strategies.validation import PayloadError


class AdapterSteps(ReconStrategy):
    """ReconStrategy whose task rounds start with ``adapters.steps`` adapter steps.

    In a plan round, every client whose task arrives trains the global adapter on the
    task's samples (``train.adapt``: ``adapters.epochs`` each time) and sends its
    factors; the server merges them exactly (``ffa``, ``stack``) or not (``fedavg``),
    and repeats. Then the ordinary task messages go out with the merged adapter, and
    the clients summarise their tasks under it without training. Every statistic
    learned in that round is thus computed under the same global adapter, the one the
    server scores with: a round of several trainers stays exact, where one message per
    task leaves each client's statistics under its own, unmerged adapter.

    A client whose adapter reply fails a check (or does not come) is left out of that
    step's merge; the merged adapter stays as the other replies make it, and its task
    still goes out. The run calls :meth:`configure_adapt` and :meth:`aggregate_adapt`
    before :meth:`configure_train`.
    """

    adapt_type = f"{MessageType.TRAIN}.{P.ADAPT}"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.adapters is None or not self.adapters.merges or self.scenario.adapters.steps < 1:
            raise ValueError("AdapterSteps needs adapters.steps >= 1 and a merge policy that merges (fedavg, ffa, stack)")
        self.adapter_log: list[dict] = []  # one entry a step: round, step, trainers, loss, failed
        self._adapt_sent: dict[int, object] = {}
        # classifier: federation: the classes the federation knows (counts and sums), the
        # earlier rounds' statistics and then each step's trainers' (the next step's negatives)
        self._known: ClassStats | None = None
        self._known_round = 0

    def method(self) -> str:
        return f"{super().method()}; {self.scenario.adapters.steps} adapter steps before each task round's statistics"

    def steps(self, server_round: int) -> int:
        """Adapter steps the round starts with: none in a round without arrivals, or where
        the schedule trains none of its tasks (``first_task`` after each client's first,
        ``until_round`` past): the server knows each client's task number, so no message
        goes out only to be answered with no factors."""
        arrivals = self.plan.arrivals_at(server_round)
        if not anyone_trains(self.scenario.adapters, [self.learned.get(a.client, 0) for a in arrivals], server_round):
            return 0
        return self.scenario.adapters.steps

    def configure_adapt(self, server_round: int, step: int) -> list[Message]:
        """The merged adapter to each of the round's connected trainers, with its task's samples."""
        due = {a.client: a for a in self.plan.arrivals_at(server_round) if a.client in self.nodes}
        payload = to_record(self.adapters.payload())
        known = self.known(server_round)
        messages, self._adapt_sent = [], {}
        for client, arrival in sorted(due.items()):
            content = RecordDict({
                P.TASK_CONFIG: ConfigRecord({"round": server_round, "task": arrival.task, "step": step,
                                             "learned": self.learned.get(client, 0)}),
                P.TASK_ARRAYS: to_record({"sample_index": arrival.sample_index, "sample_labels": arrival.sample_labels,
                                          **({"known_ids": known.ids, "known_counts": known.counts,
                                              "known_sums": known.sums} if known is not None else {})}),
                P.ADAPTER: payload,
            })
            self.add_setup(content, client, server_round)
            node = self.nodes.node(client)
            messages.append(Message(content, dst_node_id=node, message_type=self.adapt_type))
            self._adapt_sent[node] = arrival
        self.traffic.sent(server_round, messages)
        return messages

    def aggregate_adapt(self, server_round: int, step: int, replies) -> bool:
        """Merge the step's checked factors; False if every client answered that its
        schedule does not train this task (no more steps are needed this round)."""
        replies = list(replies)
        self.traffic.received(server_round, replies)
        # merged in the clients' order, not the replies': float addition is not associative,
        # and a run's adapter must not depend on which reply came first
        sent = self._adapt_sent
        replies.sort(key=lambda r: sent[r.metadata.src_node_id].client if r.metadata.src_node_id in sent else -1)
        factors, weights, losses, failed, classes = [], [], [], [], []
        answered = set()
        for reply in replies:
            arrival = self._adapt_sent.get(reply.metadata.src_node_id)
            if arrival is None:
                continue
            answered.add(reply.metadata.src_node_id)
            try:
                update = self.check_factors(reply)
                step_classes = self.check_step_classes(reply, arrival) if update is not None else None
            except (PayloadError, KeyError) as exc:
                self._left_out(server_round, step, arrival, str(exc), failed)
                continue
            self.nodes.delivered(arrival.client)
            if step_classes is not None:
                classes.append(step_classes)
            if update is not None:
                factors.append(update)
                weights.append(float(len(arrival.sample_labels)))
                if P.METRICS in reply.content:
                    losses.append(float(reply.content[P.METRICS].get("loss", float("nan"))))
        for node, arrival in self._adapt_sent.items():
            if node not in answered:
                self._left_out(server_round, step, arrival, "no reply before the timeout", failed)
        # staleness is keep here (the scenario check refuses compensate): older statistics stay as they are
        self.adapters.merge(factors, weights)
        if classes:
            self._known = known_after(self._known, classes)
        self.adapter_log.append({"round": server_round, "step": step + 1, "trainers": len(factors),
                                 "loss": sum(losses) / len(losses) if losses else None, "failed": sorted(failed)})
        log(INFO, "round %d adapter step %d: %d trainers merged", server_round, step + 1, len(factors))
        return bool(factors or failed)

    def known(self, server_round: int) -> ClassStats | None:
        """The federation's classes a step's trainers separate their own from
        (``adapters.classifier: federation``; None: task, or nothing known yet)."""
        if self.scenario.adapters.classifier != "federation":
            return None
        if self._known_round != server_round:  # a new round starts from the merged statistics
            self._known_round = server_round
            self._known = trained_columns(self.stats, self.scenario.adapters) if len(self.stats) else None
        return self._known

    def check_step_classes(self, reply, arrival) -> ClassStats | None:
        """A trainer's class counts and sums (classifier: federation): its task's classes
        with their exact sample counts, one finite row each of the feature size; None when
        the scenario asks for none."""
        if self.scenario.adapters.classifier != "federation":
            return None
        if P.STEP_CLASSES not in reply.content:
            raise PayloadError("the adapter step reply has no class sums (classifier: federation)")
        got = {k: v.numpy() for k, v in reply.content[P.STEP_CLASSES].items()}
        if set(got) != {"ids", "counts", "sums"}:
            raise PayloadError(f"class sums with keys {sorted(got)}, not ids, counts, sums")
        ids, counts = np.unique(arrival.sample_labels, return_counts=True)
        if got["ids"].shape != ids.shape or not np.array_equal(got["ids"], ids) or not np.array_equal(got["counts"], counts):
            raise PayloadError("class sums for other classes or counts than the task's samples")
        sums, dim = np.asarray(got["sums"]), self.scenario.adapters.trained_dim(self.dim)
        if sums.shape != (len(ids), dim) or not np.issubdtype(sums.dtype, np.floating) or not np.isfinite(sums).all():
            raise PayloadError(f"class sums of shape {sums.shape} ({sums.dtype}), not ({len(ids)}, {dim}) finite floats")
        return ClassStats(ids.astype(np.int64), counts.astype(np.float64), sums.astype(np.float64))

    def _left_out(self, server_round: int, step: int, arrival, reason: str, failed: list[int]) -> None:
        # not a failed task (its task message still goes out): no retry is booked
        log(WARNING, "round %d adapter step %d: client %d left out: %s", server_round, step + 1, arrival.client, reason)
        self.failures.append({"round": server_round, "client": arrival.client, "task": arrival.task,
                              "reason": f"adapter step {step + 1}: {reason}"})
        failed.append(arrival.client)

    def state(self) -> dict:
        return {**super().state(), "adapter_log": self.adapter_log}

    def restore(self, state: dict, stats, model: dict | None = None) -> None:
        super().restore(state, stats, model)
        self.adapter_log = list(state.get("adapter_log", []))
