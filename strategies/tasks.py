"""The task phase: each client with a task gets its classes and samples; its reply is checked and folded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from flwr.app import ConfigRecord, Message, RecordDict

from fedrecon import protocol as P
from fedrecon.plan.records import Arrival
from fedrecon.scenario import Scenario
from strategies.faults import fault_plan
from strategies.rounds import Outbox, RoundWork
from strategies.setup import NodeSetup
from strategies.state import ServerState
from strategies.validation import PayloadError
from strategies.wire import to_record


class Learning(Protocol):
    """What a task message carries besides the task, and how a checked reply is folded:
    class statistics (:class:`strategies.prototypes.Prototypes`) or a fine-tuned model
    (:class:`strategies.finetune.Finetune`)."""

    message_type: str

    def round_records(self, state: ServerState) -> tuple[dict, dict, dict]:
        """Records every task message of the round carries, arrays added to its task
        arrays, and what :meth:`check` needs to know of them."""

    def client_records(self, state: ServerState, client: int) -> dict:
        """Records the task message of ``client`` carries besides (none but a site's)."""

    def check(self, state: ServerState, reply: Message, arrival: Arrival, sent: dict) -> Any:
        """The reply, every part checked (raises :class:`PayloadError` or ``KeyError``)."""

    def fold(self, state: ServerState, server_round: int, accepted: list[tuple[Arrival, Any]]) -> None:
        """Merge a round's checked replies (none: the state stays bit for bit)."""

    def describe(self) -> str:
        """One line for the run's summary."""


class TaskMessages:
    """Builds a round's task messages: the round, the task, the client's count of
    accepted tasks, the noise to add under differential privacy, the faults the
    scenario injects, the sample indices, the learning's records, and the setup where
    the node lacks it."""

    def __init__(self, scenario: Scenario, learning: Learning, setup: NodeSetup):
        self.learning, self.setup = learning, setup
        self.faults = fault_plan(scenario.faults.inject, scenario.faults.reply_timeout)

    def build(self, state: ServerState, work: RoundWork, dp_std: float | None = None,
              client_records: Callable[[int], dict] = lambda client: {}) -> Outbox:
        records, task_arrays, sent = self.learning.round_records(state)
        outbox = Outbox("tasks", [], extra={"sent": sent})
        for client, (arrival, parts) in work.tasks.items():
            content = RecordDict({
                P.TASK_CONFIG: ConfigRecord({"round": work.number, "task": arrival.task,
                                             "learned": state.learned.get(client, 0),
                                             **({"dp_std": dp_std} if dp_std is not None else {}),
                                             **self.faults.get((client, work.number), {})}),
                P.TASK_ARRAYS: to_record({"sample_index": arrival.sample_index, "sample_labels": arrival.sample_labels,
                                          **task_arrays}),
                **records,
                **self.learning.client_records(state, client),
                **client_records(client),
            })
            self.setup.attach(content, state.nodes, client)
            node = state.nodes.node(client)
            outbox.messages.append(Message(content, dst_node_id=node, message_type=self.learning.message_type))
            outbox.to[node] = (arrival, parts)
        return outbox


class Tasks:
    """The task phase in the clear: every reply checked on its own, the accepted ones
    folded in the clients' order; a reply that fails any check, an error and a missing
    reply fail their task, which waits for a later round."""

    def __init__(self, messages: TaskMessages):
        self.messages = messages

    def describe(self) -> str:
        return self.messages.learning.describe()

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        return 1

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        return self.messages.build(state, work, state.budget.std(1) if state.budget is not None else None)

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        if outbox.messages and state.budget is not None:
            state.budget.release()  # what the clients sent was noised for this release
        learning, accepted, answered = self.messages.learning, [], outbox.answers(replies)
        for node, reply in answered.items():
            arrival, parts = outbox.to[node]
            try:
                checked = learning.check(state, reply, arrival, outbox.extra["sent"])
            except (PayloadError, KeyError) as exc:
                state.fail(work.number, arrival, str(exc), parts)
                continue
            # only a reply whose every part passed counts: a rejected one leaves the global state as it was
            accepted.append((arrival, checked))
            state.accepted(arrival.client, arrival)
        for node, (arrival, parts) in outbox.to.items():
            if node not in answered:
                state.fail(work.number, arrival, "no reply before the timeout", parts)
        # in the clients' order, not the replies': float addition is not associative, and a
        # run's result must not depend on which reply came first
        learning.fold(state, work.number, sorted(accepted, key=lambda item: (item[0].client, item[0].task)))
        return True
