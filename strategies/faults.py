"""Tasks that failed, waiting to be offered again; faults the server asks clients to fake."""

from __future__ import annotations

from dataclasses import dataclass

from fedrecon import protocol as P
from fedrecon.plan.records import Arrival, arrival_from_dict


@dataclass
class Waiting:
    """A task of the plan that has failed ``tries`` times so far."""

    arrival: Arrival
    tries: int


class RetryBook:
    """Failed tasks per client, offered again in the client's next message.

    A task is given up after ``limit`` retries (it is then counted as lost);
    a client that is not connected keeps its tasks without using up a try.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.waiting: dict[int, list[Waiting]] = {}
        self.retries = 0
        self.lost: list[dict] = []

    def __bool__(self) -> bool:
        return any(self.waiting.values())

    def take(self, client: int) -> list[Waiting]:
        """The client's waiting tasks, removed from the book (they are being sent)."""
        parts = self.waiting.pop(client, [])
        self.retries += len(parts)
        return parts

    def put_back(self, parts: list[Waiting]) -> None:
        """Tasks that were not sent this round (the client is away): no try used."""
        for part in parts:
            self.waiting.setdefault(part.arrival.client, []).append(part)

    def failed(self, parts: list[Waiting], server_round: int, reason: str) -> None:
        for part in parts:
            if part.tries >= self.limit:
                self.lost.append({"round": server_round, "client": part.arrival.client, "task": part.arrival.task,
                                  "classes": list(part.arrival.classes), "reason": reason})
                continue
            self.waiting.setdefault(part.arrival.client, []).append(Waiting(part.arrival, part.tries + 1))

    def give_up(self, server_round: int, reason: str) -> None:
        """Count every task still waiting as lost (the run ends without another round for it)."""
        for parts in self.waiting.values():
            self.lost += [{"round": server_round, "client": p.arrival.client, "task": p.arrival.task,
                           "classes": list(p.arrival.classes), "reason": reason} for p in parts]
        self.waiting = {}

    # --- checkpoint ---------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "limit": self.limit,
            "retries": self.retries,
            "lost": self.lost,
            "waiting": [{"arrival": w.arrival.to_dict(), "tries": w.tries} for ws in self.waiting.values() for w in ws],
        }

    @classmethod
    def from_state(cls, state: dict) -> "RetryBook":
        book = cls(int(state["limit"]))
        book.retries = int(state["retries"])
        book.lost = list(state["lost"])
        book.put_back([Waiting(arrival_from_dict(w["arrival"]), int(w["tries"])) for w in state["waiting"]])
        return book


def fault_plan(inject, timeout: float) -> dict[tuple[int, int], dict]:
    """(client, round) -> task-config entries that make that client misbehave."""
    return {
        (f.client, f.round): {P.FAULT_KIND: f.kind, P.FAULT_SECONDS: float(f.seconds if f.seconds is not None else timeout + 2.0)}
        for f in inject
    }
