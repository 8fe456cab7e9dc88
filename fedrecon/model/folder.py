"""The model folder on disk: safetensors and JSON files, each named with its sha256 in
``manifest.json``, and refused whole when one is missing, altered or unexpected.

Nothing in a model folder is pickled (a pickle runs code when it is read): arrays are
safetensors, everything else JSON. The manifest carries a digest of its own content as
well, so an edited class name or setting is refused like an edited weight. Digests catch
damage and careless edits; they do not sign the folder (whoever edits it can write new
ones), and a folder from someone you do not trust is no safer for them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FORMAT = "fedrecon-model"
VERSION = 1
MANIFEST = "manifest.json"


class ModelError(ValueError):
    """A model folder that cannot be used (missing, incomplete, altered), or input it cannot read.
    Its message is one line that names the file or input."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as a safetensors file (contiguous copies: safetensors takes no views)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error for a file that is no safetensors
        raise ModelError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from None


def seal(folder: Path, manifest: dict) -> dict:
    """Write ``manifest.json`` naming every other file of ``folder`` with its sha256."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format": FORMAT, "version": VERSION, **manifest, "files": {n: sha256_file(folder / n) for n in files}}
    manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextmanager
def replacing(out: Path) -> Iterator[Path]:
    """A new folder beside ``out`` to write a model folder in; it replaces ``out`` (new, or an
    earlier export) only once the block ends without error, so a failed export leaves no half
    folder and an earlier one whole."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ModelError(f"{out}: exists and is not a model folder; give a new folder or an earlier export's")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        # two renames, then the old folder removed: a reader between rounds (a site's model,
        # replaced each round) finds no folder for microseconds, not for a whole rmtree
        old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_folder(folder: str | Path) -> dict:
    """The manifest of a model folder whose every file matches its digest; else :class:`ModelError`."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such model folder (make one with: fedrecon export RUN_DIR --out {folder})")
    if not path.is_file():
        raise ModelError(f"{folder}: not a model folder (no {MANIFEST}; make one with fedrecon export)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ModelError(f"{path}: format version {manifest.get('version')!r}; this fedrecon reads version {VERSION}")
    if manifest.get("manifest_sha256") != hashlib.sha256(_canonical(manifest)).hexdigest():
        raise ModelError(f"{path}: altered (its content does not match its own digest)")
    files = manifest.get("files", {})
    for name, digest in sorted(files.items()):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: incomplete, {name} is missing")
        if sha256_file(folder / name) != digest:
            raise ModelError(f"{folder / name}: altered (sha256 differs from the manifest's)")
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in files and p.name != MANIFEST)
    if extra:
        raise ModelError(f"{folder}: {extra[0]} is not in the manifest (a model folder holds only its own files)")
    return manifest
