"""What a site node learned: every sample learned exactly once, whatever is retried, restarted or resumed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from fedrecon.data.dataset import DataError
from fedrecon.data.sites import SiteSample

_RUN = re.compile(r"[0-9a-f]{1,64}")


def task_id(keys: Sequence[str]) -> str:
    """The id of an offer: sha256 of the sorted keys joined by newlines, first 16 hex chars.

    Derived from the samples, not drawn: an offer retried after a crash gets the id it had,
    and the server, which accepts an id once, cannot count its samples twice."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


class Ledger:
    """A node's record of its site's samples, in ``<folder>/ledger-<run>.json``.

    ``run`` is the server's run token (a short hex string): a new run starts an empty
    ledger, a resumed run finds its own. ``learned``: keys of samples whose task the server
    accepted. ``offered``: task id -> keys, sent to the server and not yet known accepted
    or refused.

    Why two steps give exactly-once: a node learns its new samples and *offers* them, saving
    the offer before its reply leaves. The server accepts a task id once and lists the site's
    accepted ids in every later task message, which the node *settles* first: an offer among
    them becomes learned, any other is dropped. A node that dies after replying finds its
    offer on disk and settled by the next message (accepted: learned, never offered again).
    One that dies before replying had its offer never reach the server, so it is not
    accepted: settling drops it and its samples are offered again. Either way a sample
    counts once at the server, and a sample the server counted is never offered again.
    Every change is written atomically and durably (temp file, fsync, rename, fsync of the
    folder): a crash leaves the old ledger or the new one, never half of one.
    """

    def __init__(self, folder: Path, run: str):
        if not isinstance(run, str) or not _RUN.fullmatch(run):
            raise DataError(f"{folder}: run token {run!r} is not a short hex string (1 to 64 of 0-9a-f)")
        self.folder = Path(folder)
        self.path = self.folder / f"ledger-{run}.json"
        self.run = run
        self.learned: set[str] = set()
        self.offered: dict[str, list[str]] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def settle(self, accepted: Iterable[str]) -> None:
        """The server's accepted task ids for this site (all of them, every round): offers among
        them become learned, every other offer is dropped (its samples are offered again). Saved."""
        accepted = set(accepted)
        for task, keys in self.offered.items():
            if task in accepted:
                self.learned.update(keys)
        self.offered = {}
        self._save()

    def offer(self, keys: Sequence[str]) -> str:
        """Record an offer of ``keys`` (samples not learned) and return its task id (:func:`task_id`).

        Saved before returning, since the reply leaves after. An empty offer returns ``""`` and
        records nothing. A learned key is refused: offering it again could count it twice."""
        if not keys:
            return ""
        again = sorted(set(keys) & self.learned)
        if again:
            raise ValueError(f"{self.path}: {len(again)} keys offered again after being learned ({again[0]}, ..)")
        task = task_id(keys)
        self.offered[task] = sorted(keys)
        self._save()
        return task

    def new(self, samples: Sequence[SiteSample]) -> list[SiteSample]:
        """The samples whose key is not learned, in order."""
        return [s for s in samples if s.key not in self.learned]

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            learned, offered = raw["learned"], raw["offered"]
            ok = raw.get("run") == self.run and isinstance(learned, list) and isinstance(offered, dict) and all(
                isinstance(k, str) for k in learned) and all(
                isinstance(t, str) and isinstance(ks, list) and all(isinstance(k, str) for k in ks) for t, ks in offered.items())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{self.path}: not a readable ledger ({type(exc).__name__}: {exc})") from None
        if not ok:
            raise DataError(f"{self.path}: not a ledger of run {self.run} "
                            '(expected {"run": .., "learned": [keys], "offered": {task: [keys]}})')
        self.learned, self.offered = set(learned), {t: list(ks) for t, ks in offered.items()}

    def _save(self) -> None:
        text = json.dumps({"run": self.run, "learned": sorted(self.learned),
                           "offered": {t: sorted(ks) for t, ks in sorted(self.offered.items())}}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_folder(self.folder)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); where a folder cannot be opened (Windows) the rename is all there is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
