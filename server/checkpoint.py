"""A run's state after each round, written atomically into its run folder, and the
earlier rounds' states kept beside it.

``checkpoint.npz`` holds the state after the last round: what ``fedrecon run --resume``
reads. Earlier rounds, which ``fedrecon export --round N`` reads, are kept as
``rounds/round-NNN.npz`` as the scenario's ``checkpoints.keep`` says: ``auto`` (the
default) every round while the rounds kept take at most ``KEEP_AUTO_MB`` in all, then the
last only; ``every``; ``last``.

Why so. A kept round is the round's checkpoint file itself: its temp file is hard-linked
into ``rounds/`` before it is renamed over ``checkpoint.npz``, so keeping a round copies
nothing, and the next round's checkpoint is a new file, which leaves the link with the
old round's bytes. What cannot be shared is the statistics: a round that learns anything
changes every array, so a kept round costs its whole size. That is small for ``ncm``
(class sums: 60 kB a round on the README's quickstart) and for ``lda`` on small features
(MiniLM's 384 x 384 second moment: 0.6 MB, an upper triangle), but a ``ridge`` head's
Gram is 64 MB at the default 4,000 random features, every round. Hence ``auto``'s budget: the runs whose rounds
are cheap keep them all with nothing to set, a run that would fill a disk keeps its last,
and ``--round`` refuses the others in one line naming ``checkpoints.keep: every``.
Each kept round carries a digest of its other members, checked when it is read: a kept
file altered, cut short or renamed is refused in one line; ``checkpoint.npz`` itself is
read as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from fedrecon.learning.stats import ClassStats
from fedrecon.scenario.sections import KEEP_AUTO_MB

CHECKPOINT = "checkpoint.npz"
ROUNDS = "rounds"  # the folder of the kept rounds

# npz names of the arrays the server keeps besides the statistics (the merged adapter's
# factors, or the fedavg_finetune model) start with this
MODEL_PREFIX = "model/"
# npz members that are no statistics: the state as JSON; a kept round's digest
META, DIGEST = "meta", "digest"
# the meta key that lists the rounds kept so far, and under which checkpoints.keep
KEPT = "kept"


class CheckpointError(ValueError):
    """A round's state that cannot be read, in one line: why, and what to do."""


def round_path(run_dir: str | Path, done: int) -> Path:
    """Where round ``done``'s state is kept."""
    return Path(run_dir) / ROUNDS / f"round-{done:03d}.npz"


def save_run_state(out_dir: str | Path, done: int, stats: ClassStats, state: dict,
                   parts: dict[int, ClassStats] | None = None, model: dict | None = None, keep: str = "last") -> Path:
    """Write the state after round ``done``: a temp file, flushed, then renamed over the
    old one, so a crash at any moment leaves either the old or the new checkpoint.
    ``parts`` are statistics kept per client (policy ``local``); ``model`` the server's
    other arrays (``ServerState.model_arrays``); ``keep`` is ``checkpoints.keep``. A kept
    round is linked into ``rounds/`` before the rename: a crash in between repeats the
    round on resume, which writes its kept file again."""
    path = Path(out_dir) / CHECKPOINT
    per_client = {f"client{c}.{k}": v for c, part in (parts or {}).items() for k, v in part.to_arrays().items()}
    arrays = {**stats.to_arrays(), **per_client, **{MODEL_PREFIX + k: v for k, v in (model or {}).items()}}
    before = {n: p for n, p in _kept_files(out_dir).items() if n < done}  # later ones: a killed run's, run again
    size = sum(np.asarray(a).nbytes for a in arrays.values())
    kept = keep == "every" or (keep == "auto" and size + sum(p.stat().st_size for p in before.values())
                               <= KEEP_AUTO_MB * 10**6)
    meta = json.dumps({"round": done, **state, KEPT: {"keep": keep, "rounds": sorted(before) + [done] * kept}}).encode()
    members = {**arrays, META: np.frombuffer(meta, dtype=np.uint8)}
    if kept:
        members[DIGEST] = np.frombuffer(_digest(members).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **members)
        f.flush()
        os.fsync(f.fileno())
    if kept:
        target = round_path(out_dir, done)
        target.parent.mkdir(exist_ok=True)
        link = target.with_name(target.name + ".tmp")
        link.unlink(missing_ok=True)
        try:
            os.link(tmp, link)
        except OSError:  # a file system without hard links: a copy
            shutil.copyfile(tmp, link)
        os.replace(link, target)
    os.replace(tmp, path)
    return path


def load_run_state(run_dir: str | Path, round: int | None = None) -> tuple[int, ClassStats, dict]:
    """(rounds done, statistics, the rest of the state) of a run folder: after its last
    round, as ``--resume`` reads it, or with ``round``, :func:`load_round`'s."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (was the run folder written by a run that finished a round?)")
    if round is not None:
        return load_round(run_dir, round)
    with np.load(path) as npz:
        return _split({k: npz[k] for k in npz.files})


def load_round(run_dir: str | Path, round: int | None = None) -> tuple[int, ClassStats, dict]:
    """As :func:`load_run_state`, after ``round`` (None: the last), from a file checked to
    be whole and that round's: the last checkpoint or a kept round's. Every reason it
    cannot is a :class:`CheckpointError` of one line."""
    last = Path(run_dir) / CHECKPOINT
    meta = json.loads(_read(last, [META])[META].tobytes().decode())
    wanted = meta["round"] if round is None else round
    path = _kept_path(run_dir, meta, wanted)
    members = _read(path)
    digest = members.pop(DIGEST, None)  # the last round's has one if it was kept
    if (digest is None and path != last) or (digest is not None and digest.tobytes() != _digest(members).encode()):
        raise CheckpointError(f"{path}: altered (its digest is not the one written with round {wanted}'s state)")
    held = json.loads(members[META].tobytes().decode())["round"]
    if held != wanted:
        raise CheckpointError(f"{path}: holds round {held}'s state, not round {wanted}'s (renamed?)")
    return _split(members)


def load_parts(run_dir: str | Path) -> dict[int, ClassStats]:
    """The per-client statistics a checkpoint holds (empty for merging policies)."""
    arrays: dict[int, dict] = {}
    with np.load(Path(run_dir) / CHECKPOINT) as npz:
        for key in npz.files:
            if key.startswith("client") and "." in key:
                client, name = key[len("client"):].split(".", 1)
                arrays.setdefault(int(client), {})[name] = npz[key]
    return {c: ClassStats.from_arrays(a) for c, a in arrays.items()}


def _split(members: dict[str, np.ndarray]) -> tuple[int, ClassStats, dict]:
    """A checkpoint's members as (round, statistics, state with ``model_arrays``)."""
    stats = ClassStats.from_arrays({k: v for k, v in members.items()
                                    if k not in (META, DIGEST) and "." not in k and not k.startswith(MODEL_PREFIX)})
    state = json.loads(members[META].tobytes().decode())
    state.pop(KEPT, None)
    model = {k[len(MODEL_PREFIX):]: v for k, v in members.items() if k.startswith(MODEL_PREFIX)}
    if model:
        state["model_arrays"] = model
    return int(state.pop("round")), stats, state


def _kept_files(run_dir: str | Path) -> dict[int, Path]:
    """The kept rounds' files there are, by round."""
    folder = Path(run_dir) / ROUNDS
    files = folder.glob("round-*.npz") if folder.is_dir() else []
    return {int(p.stem[len("round-"):]): p for p in files if p.stem[len("round-"):].isdigit()}


def _kept_path(run_dir: str | Path, meta: dict, wanted: int) -> Path:
    """The file of round ``wanted``'s state, from what the last checkpoint's ``meta`` says was kept."""
    last = Path(run_dir) / CHECKPOINT
    done, kept = meta["round"], meta.get(KEPT, {"keep": "last", "rounds": []})
    if wanted == done:
        return last
    recorded = sorted(row["round"] for row in meta["rows"]) if "rows" in meta else list(range(1, done + 1))
    if wanted not in recorded:
        raise CheckpointError(f"{run_dir}: round {wanted} was not run (the run's rounds: {_spans(recorded)})")
    path = round_path(run_dir, wanted)
    if wanted not in kept["rounds"]:
        why = {"last": "checkpoints.keep is last", "auto": f"checkpoints.keep: auto keeps rounds while they take at "
               f"most {KEEP_AUTO_MB} MB in all", "every": "its file was gone when a later round was written"}
        earlier = [r for r in kept["rounds"] if r != done]
        shown = f"rounds {_spans(earlier)} and" if earlier else "only"
        raise CheckpointError(f"{run_dir}: round {wanted} is not kept ({why.get(kept['keep'], kept['keep'])}; the "
                              f"folder holds {shown} the last, {done}); set checkpoints.keep: every in the scenario "
                              f"to keep every round")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the run kept round {wanted}'s state there); restore it, or export "
                              f"another round: rounds {_spans(sorted((set(kept['rounds']) | {done}) - {wanted}))}")
    return path


def _read(path: Path, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The members ``keys`` (None: every one) of a checkpoint file; a file that is no
    whole npz with its meta is a :class:`CheckpointError`."""
    try:
        with np.load(path) as npz:
            members = {k: npz[k] for k in (npz.files if keys is None else keys)}
        json.loads(members[META].tobytes().decode())["round"]
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a whole checkpoint ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    return members


def _digest(members: dict[str, np.ndarray]) -> str:
    """sha256 over the members' names, dtypes, shapes and C-order bytes, names sorted."""
    h = hashlib.sha256()
    for key in sorted(members):
        a = np.ascontiguousarray(members[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _spans(rounds: list[int]) -> str:
    """1, 2, 3, 5 -> '1-3, 5'."""
    spans: list[list[int]] = []
    for r in rounds:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "none"
