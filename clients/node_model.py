"""The current merged model a site node keeps in its node folder between rounds.

``<node folder>/merged/`` holds the merged statistics (``stats.npz``, numpy without pickle)
and ``state.json`` (the run, the version, i.e. the round they are of, class names by id, and
the sha256 of ``stats.npz``); ``<node folder>/model/`` is the exported model folder
(:mod:`fedrecon.model`) that ``fedrecon predict`` and :mod:`fedrecon.api` read.

Each update writes the model folder first and then the merged state, each file through a
temporary file and ``os.replace``: a node stopped in between holds the earlier version and
the server sends the delta from it again, which rewrites the model folder. A state that
does not match its statistics (stopped between the two files, or damaged) is read as
version 0, and the server sends everything.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fedrecon.learning.stats import ClassStats
from fedrecon.learning.stats_delta import apply_delta

MERGED, MODEL = "merged", "model"
STATS_FILE, STATE_FILE = "stats.npz", "state.json"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class NodeModel:
    """The merged model this node holds: ``version`` (0: none), ``names`` by id and ``stats``.

    Parameters
    ----------
    folder : Path
        The node folder.
    dim : int
        The node's feature size (its backbone's); held statistics of another size are not read.
    run : str
        What identifies the run (the scenario's digest): a folder that holds another run's
        model is read as version 0, or its round numbers would match this run's.
    """

    def __init__(self, folder: Path, *, dim: int, run: str, noisy: bool = False):
        # noisy (privacy.dp): the merged counts carry noise, and may be anything
        self.folder, self.dim, self.run, self.noisy = Path(folder), dim, run, noisy
        self.version, self.names, self.stats = 0, {}, None
        merged = self.folder / MERGED
        if not (merged / STATE_FILE).exists():
            return  # a new node
        try:
            state = json.loads((merged / STATE_FILE).read_text())
            if state["run"] != run:
                return  # another run's model: replaced at the next update
            data = (merged / STATS_FILE).read_bytes()
            if hashlib.sha256(data).hexdigest() != state["stats_sha256"]:
                raise ValueError(f"{STATS_FILE} does not match {STATE_FILE} (stopped while saving?)")
            if not (self.folder / MODEL / "manifest.json").is_file():
                raise ValueError(f"{MODEL}/ is missing or incomplete")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                stats = apply_delta(None, {k: npz[k] for k in npz.files}, dim, noisy)
            names = {int(c): str(n) for c, n in state["names"].items()}
            version = int(state["version"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"warning: {merged}: unreadable, holding no model until the server sends it whole "
                  f"({type(exc).__name__}: {exc})".replace("\n", " "), file=sys.stderr)
            return
        self.version, self.names, self.stats = version, names, stats

    def update(self, delta: Mapping[str, np.ndarray], names: Mapping[int, str], base: int, version: int,
               write: Callable[[Path, ClassStats, dict[int, str]], None]) -> bool:
        """Apply ``delta`` (:func:`fedrecon.learning.stats_delta.apply_delta`), which starts
        from version ``base``, to become version ``version``.

        False, nothing changed, if ``base`` is not the version this node holds (the server then
        sends the delta from the version the node holds). Otherwise ``write(model folder,
        statistics, names)`` writes the model folder (replacing it whole, as
        :func:`fedrecon.model.export.write_model` does; a damaged one, without its manifest,
        is removed first), the merged state is saved, and True.
        ``names`` are the names of the delta's classes (or more); the node keeps the others'.
        A malformed delta, a class without a name or ``version <= base`` raise ValueError
        before anything is written; an error of ``write`` leaves the earlier version held.
        """
        if base != self.version:
            return False
        if version <= base:
            raise ValueError(f"a delta from version {base} to {version}: versions must grow")
        stats = apply_delta(self.stats if base else None, delta, self.dim, self.noisy)
        names = {**(self.names if base else {}), **{int(c): str(n) for c, n in names.items()}}
        nameless = [int(c) for c in stats.ids if int(c) not in names]
        if nameless:
            raise ValueError(f"version {version}: no class name for class ids {nameless[:5]}")
        names = {int(c): names[int(c)] for c in stats.ids}
        model = self.folder / MODEL
        if model.is_dir() and not (model / "manifest.json").is_file():
            shutil.rmtree(model)  # this node's own folder, damaged: write_model would refuse to replace it
        write(model, stats, dict(names))
        merged = self.folder / MERGED
        merged.mkdir(parents=True, exist_ok=True)
        data = _npz_bytes(stats.to_arrays())
        _write_atomic(merged / STATS_FILE, data)
        state = {"run": self.run, "version": version, "names": {str(c): n for c, n in names.items()},
                 "stats_sha256": hashlib.sha256(data).hexdigest()}
        _write_atomic(merged / STATE_FILE, (json.dumps(state, indent=1) + "\n").encode())
        self.version, self.names, self.stats = version, names, stats
        return True
