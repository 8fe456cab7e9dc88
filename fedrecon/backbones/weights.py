"""Backbone weights by digest: held once per process, and once per machine on disk.

A node is sent the backbone's weights with its first message. Keeping them in the node's
``Context.state`` would cost every later message: Flower's simulation moves each node's
state to the worker and back with every message (459 kB of conv4 weights there add about
10 ms a message, ``bench/sim_floor.py --state-kb 459``). The weights never change within a
run and are named by their digest, so a process keeps one copy for all the virtual clients
it serves, and the machine keeps one file that the other processes on it (the simulation's
other workers, a SuperNode's per-message processes and its worker) read instead. Written
here rather than taken from a library: it is a dict and a folder of ``.npz`` files whose
names are the content's digest, checked on every read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

_HELD: dict[str, dict[str, np.ndarray]] = {}  # digest -> weights, this process's copy
KEEP = 16  # weight files a folder keeps (the most recently used)


def state_digest(state: dict[str, np.ndarray]) -> str:
    """Digest of a backbone's weights: clients prove with it that they hold the server's."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key]).tobytes())
    return h.hexdigest()[:16]


def default_folder() -> Path:
    """The machine's folder of weights when the node has no cache folder of its own (one per user)."""
    return Path(tempfile.gettempdir()) / f"fedrecon-{os.getuid()}" / "weights"


class WeightStore:
    """Weights by digest: this process's copy, else the folder's file (checked, a bad one removed)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def put(self, digest: str, weights: dict[str, np.ndarray]) -> None:
        """Keep ``weights`` under ``digest``; weights that do not match it are refused."""
        if digest not in _HELD:
            if state_digest(weights) != digest:
                raise ValueError(f"backbone weights do not match digest {digest}")
            _HELD[digest] = {k: np.array(v) for k, v in weights.items()}
        path = self.folder / f"{digest}.npz"
        if path.is_file():
            os.utime(path)
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{uuid.uuid4().hex}.tmp.npz"
            np.savez(tmp, **_HELD[digest])
            os.replace(tmp, path)  # another process sees no file or the whole file
            self._evict(keep=path)
        except OSError:  # a read-only or full disk: this process's copy still serves
            pass

    def get(self, digest: str) -> dict[str, np.ndarray] | None:
        """The weights of ``digest`` (None: neither this process nor the folder holds them)."""
        if digest in _HELD:
            return _HELD[digest]
        path = self.folder / f"{digest}.npz"
        try:
            with np.load(path) as f:
                weights = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            return None
        if state_digest(weights) != digest:  # damaged or tampered: the server sends them again
            path.unlink(missing_ok=True)
            return None
        _HELD[digest] = weights
        os.utime(path)
        return weights

    def held(self) -> list[str]:
        """Digests this process or the folder holds (at most :data:`KEEP` files are kept)."""
        files = [p.stem for p in self.folder.glob("*.npz")] if self.folder.is_dir() else []
        return sorted(set(_HELD) | set(files))

    def _evict(self, keep: Path) -> None:
        old = sorted((p for p in self.folder.glob("*.npz") if p != keep), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) + 1 - KEEP)]:
            p.unlink(missing_ok=True)
