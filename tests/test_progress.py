"""Progress inside a round: a live line on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import time

from server.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_long_phase_says_it_waits_and_when_it_is_done_and_a_short_one_nothing():
    out = io.StringIO()
    progress = Progress(5, stream=out, every=0.05)
    with progress.phase(2, "tasks", 5) as seen:
        seen(1)
    assert out.getvalue() == ""  # short: nothing
    with progress.phase(2, "tasks", 5) as seen:
        time.sleep(0.06)
        seen(3)
        time.sleep(0.06)
        seen(5)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("round   2/5  tasks: 3/5 replies, ") and lines[0].endswith("(waiting)")
    assert lines[-1].startswith("round   2/5  tasks: 5/5 replies, ") and lines[-1].endswith("(done)")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()  # plain lines for CI logs


def test_on_a_terminal_the_live_line_shows_and_is_erased():
    out = Terminal()
    progress = Progress(5, stream=out)
    with progress.phase(1, "clients", 3, "connected") as seen:
        seen(2)
        time.sleep(0.4)  # rich refreshes 4 times a second
    text = out.getvalue()
    assert "round   1/5  clients: 2/3 connected" in text
    assert "\x1b[2K" in text or "\x1b[1A" in text  # the line is cleared when the phase ends


def test_silent_progress_writes_nothing_and_no_phase_for_no_messages():
    out = io.StringIO()
    with Progress.silent().phase(1, "tasks", 3) as seen:
        seen(1)
    with Progress(1, stream=out, every=0).phase(1, "tasks", 0) as seen:
        seen(0)
    assert out.getvalue() == ""
