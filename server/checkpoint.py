"""A run's state after each round, written atomically into its run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fedrecon.learning.stats import ClassStats

CHECKPOINT = "checkpoint.npz"


# npz names of the arrays the server keeps besides the statistics (the merged adapter's
# factors, or the fedavg_finetune model) start with this
MODEL_PREFIX = "model/"


def save_run_state(out_dir: str | Path, done: int, stats: ClassStats, state: dict,
                   parts: dict[int, ClassStats] | None = None, model: dict | None = None) -> Path:
    """Write the state after round ``done``: a temp file, flushed, then renamed over the
    old one, so a crash at any moment leaves either the old or the new checkpoint.
    ``parts`` are statistics kept per client (policy ``local``); ``model`` the server's
    other arrays (``ServerState.model_arrays``)."""
    path = Path(out_dir) / CHECKPOINT
    tmp = path.with_name(path.name + ".tmp")
    meta = json.dumps({"round": done, **state}).encode()
    with tmp.open("wb") as f:
        per_client = {f"client{c}.{k}": v for c, part in (parts or {}).items() for k, v in part.to_arrays().items()}
        np.savez(f, **stats.to_arrays(), **per_client, meta=np.frombuffer(meta, dtype=np.uint8),
                 **{MODEL_PREFIX + k: v for k, v in (model or {}).items()})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_run_state(run_dir: str | Path) -> tuple[int, ClassStats, dict]:
    """(rounds done, statistics, the rest of the state) of a run folder."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (was the run folder written by a run that finished a round?)")
    with np.load(path) as npz:
        stats = ClassStats.from_arrays({k: npz[k] for k in npz.files
                                        if k != "meta" and "." not in k and not k.startswith(MODEL_PREFIX)})
        state = json.loads(npz["meta"].tobytes().decode())
        model = {k[len(MODEL_PREFIX):]: npz[k] for k in npz.files if k.startswith(MODEL_PREFIX)}
    if model:
        state["model_arrays"] = model
    return int(state.pop("round")), stats, state


def load_parts(run_dir: str | Path) -> dict[int, ClassStats]:
    """The per-client statistics a checkpoint holds (empty for merging policies)."""
    arrays: dict[int, dict] = {}
    with np.load(Path(run_dir) / CHECKPOINT) as npz:
        for key in npz.files:
            if key.startswith("client") and "." in key:
                client, name = key[len("client"):].split(".", 1)
                arrays.setdefault(int(client), {})[name] = npz[key]
    return {c: ClassStats.from_arrays(a) for c, a in arrays.items()}
