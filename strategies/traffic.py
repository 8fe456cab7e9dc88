"""Bytes each round moves, down and up; a backbone sent again is counted apart too."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict

from strategies.wire import message_bytes, record_bytes


class Traffic:
    """Per round: ``bytes_down``, ``bytes_up`` and ``bytes_down_resent`` (a node that
    lost its setup, e.g. a restarted SuperNode, gets the backbone again), the messages
    each way (``messages_down``, ``messages_up``: replies that are no error), and under
    ``clients.edges`` the edges' sums to the top tier (``bytes_up_top``; ``bytes_up``
    is then what the clients send their edges)."""

    def __init__(self):
        self.rounds: dict[int, dict[str, int]] = {}

    def of(self, server_round: int) -> dict[str, int]:
        return self.rounds.setdefault(server_round, {"bytes_down": 0, "bytes_up": 0, "bytes_down_resent": 0,
                                                     "messages_down": 0, "messages_up": 0, "bytes_up_top": 0})

    def sent(self, server_round: int, messages: Iterable[Message]) -> None:
        messages = list(messages)
        self.of(server_round)["bytes_down"] += message_bytes(messages)
        self.of(server_round)["messages_down"] += len(messages)

    def received(self, server_round: int, replies: Iterable[Message]) -> None:
        answers = [r for r in replies if not r.has_error()]
        self.of(server_round)["bytes_up"] += message_bytes(answers)
        self.of(server_round)["messages_up"] += len(answers)

    @staticmethod
    def part_bytes(message: Message, keys: Iterable[str]) -> int:
        """What some of a message's records weigh (a message's size is the sum of its records')."""
        return record_bytes(RecordDict({k: message.content[k] for k in keys if k in message.content}))

    def to_top(self, server_round: int, size: int) -> None:
        self.of(server_round)["bytes_up_top"] += size

    def model(self, server_round: int, size: int) -> None:
        """Bytes of the model updates sent to the sites (a part of bytes_down)."""
        self.of(server_round)["bytes_model"] = self.of(server_round).get("bytes_model", 0) + size

    def resent(self, server_round: int, size: int) -> None:
        self.of(server_round)["bytes_down_resent"] += size

    def state(self) -> dict:
        return {str(r): t for r, t in self.rounds.items()}

    def restore(self, state: dict) -> None:
        self.rounds = {int(r): {"bytes_up_top": 0, **t} for r, t in state.items()}
