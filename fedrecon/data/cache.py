"""A node-local cache on disk of prepared samples: decoded once, memory-mapped after.

In deployment every message runs in a new process, which would decode and resize a whole
dataset again (Omniglot: 13,180 drawings, about a second). What a node has prepared once
is kept as an ``.npy`` file under the node's cache folder and memory-mapped by the next
process. A key names the loader, its settings and every source file's path, size and
modification time, so a changed dataset is never served stale; the folder is bounded in
size, the least recently used entries going first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Bump when what a loader writes changes: old entries are then never read.
VERSION = 1


@dataclass(frozen=True)
class DiskCache:
    """Arrays by key in ``folder``, at most ``limit`` bytes in all (equal caches compare
    equal, so a process's own dataset cache can key on them)."""

    folder: Path
    limit: int = 2 * 2**30

    @staticmethod
    def key(loader: str, files: list[Path], **settings) -> str:
        stamp = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        text = json.dumps({"version": VERSION, "loader": loader, "files": stamp, "settings": settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def array(self, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
        """The array stored under ``key`` (memory-mapped, read-only), built and stored first if absent."""
        path = self.folder / f"{key}.npy"
        found = self._open(path)
        if found is not None:
            return found
        self.folder.mkdir(parents=True, exist_ok=True)
        # Nodes on one machine may share the folder: one builds, the others wait for it
        # rather than decode the same data side by side on the same cores.
        with open(self.folder / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self._open(path)
            if found is not None:
                return found
            array = build()
            tmp = self.folder / f".{uuid.uuid4().hex}.tmp.npy"
            np.save(tmp, np.ascontiguousarray(array))
            os.replace(tmp, path)  # a reader sees the old file or the new one, whole
        self._evict(keep=path)
        return np.load(path, mmap_mode="r")

    @staticmethod
    def _open(path: Path) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            os.utime(path)  # recently used
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # a damaged entry is rebuilt
            path.unlink(missing_ok=True)
            return None

    def _evict(self, keep: Path) -> None:
        entries = sorted((p for p in self.folder.glob("*.npy") if p != keep), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries) + keep.stat().st_size
        for p in entries:
            if total <= self.limit:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
