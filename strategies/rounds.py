"""A round as a list of phases over one server state: the round's work, what a phase is, and how they run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import Message

from fedrecon.plan.records import Arrival, merge_arrivals
from strategies.faults import Waiting
from strategies.state import ServerState


@dataclass
class Outbox:
    """One exchange of a phase: its messages, the label progress and the message log
    show, and what each message is for (node id -> the task or client it concerns)."""

    label: str
    messages: list[Message]
    to: dict[int, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # what the phase's absorb needs of its build

    def answers(self, replies: list[Message]) -> dict[int, Message]:
        """The first reply of each node this outbox wrote to, by node, in the order the
        messages went out (a reply from any other node, or a second one, is ignored)."""
        got: dict[int, Message] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if node in self.to and node not in got:
                got[node] = reply
        return {node: got[node] for node in self.to if node in got}


@dataclass
class RoundWork:
    """What a round works on, dealt once when it starts: its tasks by client (the ones
    due and the failed ones waiting, merged: one message a client a round), and what
    its phases hand each other within the round (``secure``: the secure sum under way;
    ``known``: the classes an adapter step's trainers separate their own from;
    ``counts``: the threshold's secure count sum)."""

    number: int
    tasks: dict[int, tuple[Arrival, list[Waiting]]]
    secure: Any = None
    known: Any = None
    counts: Any = None  # the unknown threshold's (or the sites' test counts') secure count sum under way
    stale: list[int] = field(default_factory=list)  # sites holding another model version than the server thought

    def drop(self, state: ServerState, client: int, reason: str) -> None:
        """A client's task leaves the round; it waits for a later round."""
        if client in self.tasks:
            arrival, parts = self.tasks.pop(client)
            state.fail(self.number, arrival, reason, parts)


def deal(state: ServerState, server_round: int) -> RoundWork:
    """The round's tasks, taken from the plan and the retry book: a client not connected
    keeps its tasks; under differential privacy a round past the budget releases nothing."""
    due = {a.client: Waiting(a, 0) for a in state.plan.arrivals_at(server_round)}
    work = RoundWork(server_round, {})
    for client in sorted(set(due) | set(state.book.waiting)):
        parts = state.book.take(client) + ([due[client]] if client in due else [])
        if client not in state.nodes:
            state.book.put_back(parts)
            state.failures.append({"round": server_round, "client": client, "task": parts[-1].arrival.task,
                                   "reason": "not connected"})
            continue
        work.tasks[client] = (merge_arrivals([p.arrival for p in parts], server_round), parts)
    budget = state.budget
    if work.tasks and budget is not None and not budget.allows_another():
        for client in list(work.tasks):
            work.drop(state, client, f"privacy budget spent (epsilon {budget.config.epsilon} after "
                                     f"{budget.releases} rounds): not released")
    return work


class Phase(Protocol):
    """One part of a round: up to :meth:`exchanges` exchanges with the clients, each
    built by :meth:`build` from the state without changing it, then absorbed by
    :meth:`absorb`, the one place the phase changes the state."""

    def exchanges(self, state: ServerState, work: RoundWork) -> int:
        """How many exchanges the phase may make this round (0: none)."""

    def build(self, state: ServerState, work: RoundWork, step: int) -> Outbox:
        """The messages of exchange ``step``; no side effects."""

    def absorb(self, state: ServerState, work: RoundWork, outbox: Outbox, replies: list[Message]) -> bool:
        """Fold the replies (the ones that came) into the state; False: no more exchanges this round."""

    def describe(self) -> str:
        """One line for the run's summary."""


def run_phases(state: ServerState, phases: list[Phase], work: RoundWork,
               exchange: Callable[[Outbox, int], list[Message]]) -> None:
    """The round's phases in order; ``exchange`` sends an outbox and returns the replies
    that came (the Grid in a run; a fake in tests). Every message and reply is counted here."""
    for phase in phases:
        for step in range(phase.exchanges(state, work)):
            outbox = phase.build(state, work, step)
            state.sent(work.number, outbox.messages)
            replies = exchange(outbox, work.number) if outbox.messages else []
            state.received(work.number, replies)
            if not phase.absorb(state, work, outbox, replies):
                break
