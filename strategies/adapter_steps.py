"""The adapter-step phase: a round's trainers first train one adapter together."""

from __future__ import annotations

from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log

from fedrecon import protocol as P
from fedrecon.learning.adapter_task import anyone_trains, known_after, trained_columns
from fedrecon.learning.stats import ClassStats
from strategies.prototypes import checked_factors
from strategies.rounds import Outbox, RoundWork
from strategies.setup import NodeSetup
from strategies.state import ServerState
from strategies.validation import PayloadError
from strategies.wire import to_record


class AdapterSteps:
    """``adapters.steps`` adapter steps before a round's task messages.

    In a plan round, every client whose task arrives trains the global adapter on the
    task's samples (``train.adapt``: ``adapters.epochs`` each time) and sends its
    factors; the server merges them exactly (``ffa``, ``stack``) or not (``fedavg``),
    and repeats. Then the task phase's messages go out with the merged adapter, and the
    clients summarise their tasks under it without training. Every statistic learned in
    that round is thus computed under the same global adapter, the one the server
    scores with: a round of several trainers stays exact, where one message per task
    leaves each client's statistics under its own, unmerged adapter.

    A client whose adapter reply fails a check (or does not come) is left out of that
    step's merge; the merged adapter stays as the other replies make it, and its task
    still goes out. The scenario check allows this phase only with a merging policy.
    """

    message_type = f"{MessageType.TRAIN}.{P.ADAPT}"

    def __init__(self, setup: NodeSetup):
        self.setup = setup

    def describe(self) -> str:
        return "adapter steps: the round's trainers train one adapter together before the task messages"

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        """None in a round without arrivals, or where the schedule trains none of its
        tasks (``first_task`` after each client's first, ``until_round`` past): the server
        knows each client's task number, so no message goes out only to be answered with
        no factors."""
        arrivals = state.plan.arrivals_at(work.number)
        if not anyone_trains(state.scenario.adapters, [state.learned.get(a.client, 0) for a in arrivals], work.number):
            return 0
        return state.scenario.adapters.steps

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        """The merged adapter to each of the round's connected trainers, with its task's samples."""
        due = {a.client: a for a in state.plan.arrivals_at(work.number) if a.client in state.nodes}
        payload = to_record(state.adapters.payload())
        known = self.known(state, work, step)
        outbox = Outbox(f"adapter step {step + 1}/{state.scenario.adapters.steps}", [], extra={"step": step, "known": known})
        for client, arrival in sorted(due.items()):
            content = RecordDict({
                P.TASK_CONFIG: ConfigRecord({"round": work.number, "task": arrival.task, "step": step,
                                             "learned": state.learned.get(client, 0)}),
                P.TASK_ARRAYS: to_record({"sample_index": arrival.sample_index, "sample_labels": arrival.sample_labels,
                                          **({"known_ids": known.ids, "known_counts": known.counts,
                                              "known_sums": known.sums} if known is not None else {})}),
                P.ADAPTER: payload,
            })
            self.setup.attach(content, state.nodes, client)
            node = state.nodes.node(client)
            outbox.messages.append(Message(content, dst_node_id=node, message_type=self.message_type))
            outbox.to[node] = arrival
        return outbox

    def known(self, state: ServerState, work: RoundWork, step: int) -> ClassStats | None:
        """The federation's classes a step's trainers separate their own from
        (``adapters.classifier: federation``; None: task, or nothing known yet): the
        merged statistics at a round's first step, then what the earlier steps added."""
        if state.scenario.adapters.classifier != "federation":
            return None
        if step == 0:
            return trained_columns(state.stats, state.scenario.adapters) if len(state.stats) else None
        return work.known

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        """Merge the step's checked factors; False if every client answered that its
        schedule does not train this task (no more steps are needed this round)."""
        step = outbox.extra["step"]
        # merged in the clients' order (the order the step's messages went out), not the replies':
        # float addition is not associative, and a run's adapter must not depend on which reply came first
        answered = outbox.answers(replies)
        factors, weights, losses, failed, classes = [], [], [], [], []
        for node, reply in answered.items():
            arrival = outbox.to[node]
            try:
                update = checked_factors(state, reply)
                step_classes = self.check_step_classes(state, reply, arrival) if update is not None else None
            except (PayloadError, KeyError) as exc:
                self.left_out(state, work.number, step, arrival, str(exc), failed)
                continue
            state.nodes.delivered(arrival.client)
            if step_classes is not None:
                classes.append(step_classes)
            if update is not None:
                factors.append(update)
                weights.append(float(len(arrival.sample_labels)))
                if P.METRICS in reply.content:
                    losses.append(float(reply.content[P.METRICS].get("loss", float("nan"))))
        for node, arrival in outbox.to.items():
            if node not in answered:
                self.left_out(state, work.number, step, arrival, "no reply before the timeout", failed)
        # staleness is keep here (the scenario check refuses compensate): older statistics stay as they are
        state.adapters.merge(factors, weights)
        work.known = known_after(outbox.extra["known"], classes) if classes else outbox.extra["known"]
        state.adapter_log.append({"round": work.number, "step": step + 1, "trainers": len(factors),
                                  "loss": sum(losses) / len(losses) if losses else None, "failed": sorted(failed)})
        log(INFO, "round %d adapter step %d: %d trainers merged", work.number, step + 1, len(factors))
        return bool(factors or failed)

    @staticmethod
    def check_step_classes(state: ServerState, reply: Message, arrival) -> ClassStats | None:
        """A trainer's class counts and sums (classifier: federation): its task's classes
        with their exact sample counts, one finite row each of the feature size; None when
        the scenario asks for none."""
        if state.scenario.adapters.classifier != "federation":
            return None
        if P.STEP_CLASSES not in reply.content:
            raise PayloadError("the adapter step reply has no class sums (classifier: federation)")
        got = {k: v.numpy() for k, v in reply.content[P.STEP_CLASSES].items()}
        if set(got) != {"ids", "counts", "sums"}:
            raise PayloadError(f"class sums with keys {sorted(got)}, not ids, counts, sums")
        ids, counts = np.unique(arrival.sample_labels, return_counts=True)
        if got["ids"].shape != ids.shape or not np.array_equal(got["ids"], ids) or not np.array_equal(got["counts"], counts):
            raise PayloadError("class sums for other classes or counts than the task's samples")
        sums, dim = np.asarray(got["sums"]), state.scenario.adapters.trained_dim(state.dim)
        if sums.shape != (len(ids), dim) or not np.issubdtype(sums.dtype, np.floating) or not np.isfinite(sums).all():
            raise PayloadError(f"class sums of shape {sums.shape} ({sums.dtype}), not ({len(ids)}, {dim}) finite floats")
        return ClassStats(ids.astype(np.int64), counts.astype(np.float64), sums.astype(np.float64))

    @staticmethod
    def left_out(state: ServerState, server_round: int, step: int, arrival, reason: str, failed: list[int]) -> None:
        # not a failed task (its task message still goes out): no retry is booked
        log(WARNING, "round %d adapter step %d: client %d left out: %s", server_round, step + 1, arrival.client, reason)
        state.failures.append({"round": server_round, "client": arrival.client, "task": arrival.task,
                               "reason": f"adapter step {step + 1}: {reason}"})
        failed.append(arrival.client)
