"""The head the server last scored with, and its answers, kept while the statistics stay the same.

A head is a function of the merged statistics alone, and a test sample's answer a function of
the head and the sample: while the statistics are equal, array for array, neither can change.
A round that learns nothing then costs only the answers of the test samples it adds (classes
the plan now counts as seen); a round that learns builds the head once and answers every
sample again. Answers are computed class by class either way, so a sample's answer comes from
the very same arithmetic whichever round first asked for it: accuracies with the cache equal
those without it, bit for bit (tests/test_head_cache.py).

The statistics are known again by identity (the server's merged statistics are a new object
whenever a merge happened: :func:`fedrecon.learning.stats.add_stats` builds new arrays, and
nothing changes them in place), held by a weak reference so that an old ridge Gram is not
kept alive; otherwise by their ids and counts (small, and changed by anything learned, noisy
or not) and then a digest of every array. The cache holds no copy of a Gram.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from fedrecon.learning.heads import Head
from fedrecon.learning.stats import ClassStats


def stats_digest(stats: ClassStats) -> bytes:
    """BLAKE2b of every array of ``stats`` with its name, shape and type."""
    h = hashlib.blake2b(digest_size=32)
    arrays = {"ids": stats.ids, "counts": stats.counts, "sums": stats.sums,
              **{f"extra:{k}": v for k, v in stats.extra.items()}, **{f"shared:{k}": v for k, v in stats.shared.items()}}
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.digest()


@dataclass
class _Scored:
    """A head, the statistics it was built from (the object, its ids, counts and digest) and
    its answers by class."""

    source: weakref.ref
    ids: np.ndarray
    counts: np.ndarray
    digest: bytes
    head: Head
    answers: dict[int, np.ndarray] = field(default_factory=dict)

    def built_from(self, stats: ClassStats) -> bool:
        # ids and counts first: they differ whenever anything was learned, and cost nothing to compare
        if not (np.array_equal(self.ids, stats.ids) and np.array_equal(self.counts, stats.counts)):
            return False
        return self.source() is stats or self.digest == stats_digest(stats)


class HeadCache:
    """Per key (the merged statistics: None; a client's own under ``local``), the last head
    built and its answers; ``build`` makes a head from statistics."""

    def __init__(self, build: Callable[[ClassStats], Head]):
        self.build = build
        self._scored: dict[Hashable, _Scored] = {}
        self.builds = 0  # heads built, for tests and benchmarks

    def clear(self) -> None:
        """Forget every head and answer (the test features changed: a merged adapter)."""
        self._scored = {}

    def _current(self, stats: ClassStats, key: Hashable) -> _Scored:
        scored = self._scored.get(key)
        if scored is None or not scored.built_from(stats):
            scored = _Scored(weakref.ref(stats), stats.ids.copy(), stats.counts.copy(), stats_digest(stats),
                             self.build(stats))
            self._scored[key] = scored
            self.builds += 1
        return scored

    def head(self, stats: ClassStats, key: Hashable = None) -> Head:
        """The head built from ``stats`` (built only if they are new): the one the answers come from."""
        return self._current(stats, key).head

    def answers(self, stats: ClassStats, features: dict[int, np.ndarray], classes, key: Hashable = None) -> list[np.ndarray]:
        """The head's answers for the test samples of each class of ``classes`` (``features``
        by class), built and answered only where the statistics or the classes are new."""
        scored = self._current(stats, key)
        for c in map(int, classes):
            if c not in scored.answers:
                scored.answers[c] = scored.head.predict(features[c]) if len(features[c]) else np.zeros(0, np.int64)
        return [scored.answers[int(c)] for c in classes]
