"""A Grid whose send_and_receive polls for replies at a chosen interval."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the CLI reads POLL_INTERVAL without importing Flower
    from flwr.app import Message

# Seconds between two pulls for replies (run-config ``poll_interval``, ``deploy-local
# --poll-interval``); pyproject.toml's [tool.flwr.app.config] repeats it as a literal.
POLL_INTERVAL = 0.2


class PollingGrid:
    """Wraps a Flower Grid; everything but ``send_and_receive`` goes to the wrapped one.

    Flower 1.42's deployment Grid (``HttpGrid``) pulls replies every 3 s, so a round
    whose replies come after 0.5 s still takes 3 s. This one pushes the same
    messages and pulls every ``interval`` seconds, through the Grid's public
    ``push_messages`` / ``pull_messages``.
    """

    def __init__(self, grid, interval: float = POLL_INTERVAL):
        self._grid = grid
        self.interval = interval
        self.watch = lambda received: None  # told how many replies are in after every pull

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.collect(self.push(messages), timeout=timeout)

    def push(self, messages: Iterable[Message]) -> set[str]:
        """Send without waiting; the ids to :meth:`collect` the replies of later."""
        messages = list(messages)
        return set(self._grid.push_messages(messages)) if messages else set()

    def collect(self, waiting: set[str], *, timeout: float | None = None) -> list[Message]:
        """The replies to the messages ``waiting`` names, pulled every ``interval`` seconds
        until all are in or ``timeout`` seconds have passed."""
        waiting = set(waiting)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies += got
            self.watch(len(replies))
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies
