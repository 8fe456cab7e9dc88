"""What to say about a path that is not there: the part that is missing and the paths
that exist nearby, so that a typo gets "did you mean" rather than advice to create it."""

from __future__ import annotations

import difflib
from pathlib import Path

# Folders listed at most this big when looking for a near name (a data folder of
# thousands of files is not read whole to mend one typo).
LISTED = 2000


def _names(folder: Path) -> list[str]:
    try:
        names = []
        for entry in folder.iterdir():
            names.append(entry.name)
            if len(names) >= LISTED:
                break
        return names
    except OSError:
        return []


def near_paths(path: str | Path, limit: int = 3) -> list[Path]:
    """Existing paths that differ from ``path`` by a typo in its missing parts.

    From the deepest folder of ``path`` that exists, each missing part is replaced by a
    close name found there (``checkpoint`` -> ``checkpoints``); a part that exists as
    written is kept. Only complete paths that exist are returned, nearest first, those
    with ``path``'s suffix only when there are any (``x.pt``, not its ``x.log``).
    """
    path = Path(path)
    parts = path.parts
    start = 0
    while start < len(parts) and Path(*parts[: start + 1]).exists():
        start += 1
    if start == len(parts) or start == 0:
        return []
    found: list[Path] = []

    def walk(at: Path, rest: tuple[str, ...]) -> None:
        if len(found) >= 3 * limit:
            return
        if not rest:
            found.append(at)
            return
        if (at / rest[0]).exists():
            walk(at / rest[0], rest[1:])
            return
        for name in difflib.get_close_matches(rest[0], _names(at), n=3 * limit, cutoff=0.6):
            walk(at / name, rest[1:])

    walk(Path(*parts[:start]), parts[start:])
    same = [p for p in found if p.suffix == path.suffix]
    return (same or found)[:limit]


def missing(path: str | Path, what: str = "file") -> str:
    """``no file X`` and, when a folder above it is missing too, which one; then the
    near paths, if any: one clause for an error line."""
    path = Path(path)
    gone = path
    while not gone.parent.exists() and gone.parent != gone:
        gone = gone.parent
    text = f"no {what} {path}"
    if gone != path:
        text += f" (no folder {gone})"
    near = near_paths(path)
    if near:
        text += "; did you mean " + " or ".join(str(p) for p in near) + "?"
    return text


def missing_checkpoint(path: str | Path) -> str:
    """Why a backbone checkpoint is not there, and what to do: mend the path when a near
    one exists (a typo), else train one where the scenario says it is."""
    text = missing(path, "checkpoint file")
    if near_paths(path):
        return text
    return f"{text}; a relative path is taken from the scenario file's folder; train one with: fedrecon pretrain --out {path}"


def layout_missing(root: str | Path, what: str, expected: str) -> str:
    """A dataset not found under ``data.root``: the layout expected there (``expected``,
    relative to the root), and the missing folder with its near names when the root itself
    is not there."""
    root = Path(root)
    text = f"no {what} under {root}: expected {root / expected}"
    if root.is_dir():
        return text
    near = near_paths(root)
    return f"{text}; {root} does not exist" + ("; did you mean " + " or ".join(map(str, near)) + "?" if near else "")
