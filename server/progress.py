"""Progress inside a round: replies in out of expected, and the time a phase has taken.

On a terminal one live line (rich) shows the phase the server waits on and is erased when
the phase ends, so the round lines read as before. Elsewhere (CI logs, pipes, `flwr run`'s
log) there is no live line: a plain line says a phase is still waiting every ``every``
seconds, and a phase that took that long says when it is done; short phases print nothing.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    """Reports the phases of a run's rounds. ``Progress.silent()`` reports nothing."""

    def __init__(self, rounds: int, stream=None, every: float = 30.0, live: bool | None = None):
        self.rounds, self.every = rounds, every
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.enabled = True

    @classmethod
    def silent(cls) -> "Progress":
        progress = cls(0, live=False)
        progress.enabled = False
        return progress

    @contextmanager
    def phase(self, server_round: int, name: str, expected: int, unit: str = "replies"):
        """While the server waits on ``expected`` replies (or other ``unit``); yields ``seen(received)``."""
        if not self.enabled or not expected:
            yield lambda received: None
            return
        state = {"received": 0, "start": time.monotonic(), "said": time.monotonic()}
        label = f"round {server_round:>3}/{self.rounds}  {name}"

        def text() -> str:
            return f"{label}: {state['received']}/{expected} {unit}, {time.monotonic() - state['start']:.1f} s"

        if self.live:
            from rich.console import Console
            from rich.live import Live

            class Line:  # rendered on every refresh, so the seconds tick while no reply comes
                def __rich__(self):
                    return text()

            with Live(Line(), console=Console(file=self.stream, highlight=False), transient=True, refresh_per_second=4):
                yield lambda received: state.update(received=received)
            return

        def seen(received: int) -> None:
            state["received"] = received
            if time.monotonic() - state["said"] >= self.every:
                print(f"{text()} (waiting)", file=self.stream, flush=True)
                state["said"] = time.monotonic()

        yield seen
        if time.monotonic() - state["start"] >= self.every:
            print(f"{text()} (done)", file=self.stream, flush=True)
