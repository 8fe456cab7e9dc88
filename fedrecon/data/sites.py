"""A site's own data folder: its samples, each keyed by its content, prepared as the backbone reads them.

A site learns, each round, the samples it holds and has not learned yet (``clients.ledger``).
So a sample needs a name that survives the folder being renamed, copied, re-sorted or grown:
its content. The key hashes the label and the content (an image file's bytes, a row's text),
so moving a file or reordering a CSV changes no key, and relabelling a sample makes it a new
one. Identical samples of one class are told apart by their rank in source order (``#2``,
``#3``..): ``n`` copies always hold the keys ``k, k#2 .. k#n``, so adding a copy adds exactly
one new key wherever it sorts.

Layout, one rule for all (hidden names, starting with ".", are skipped everywhere: the node
keeps its state in ``<site>/.fedrecon/``):

- images (``read`` "ink" or "rgb"): ``<site>/train/<class>/<image>``, optional ``<site>/test/<class>/<image>``;
- text (``read`` "text"): ``<site>/train.csv`` or ``<site>/train.jsonl``, optional ``test.csv`` or
  ``test.jsonl``; a CSV has a header row, a JSONL file one object a line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrecon.data.dataset import DataError
from fedrecon.data.text import jsonl_rows
from fedrecon.model.folder import ModelError
from fedrecon.model.inputs import IMAGE_SUFFIXES, read_image

READS = ("ink", "rgb", "text")
PARTS = ("train", "test")
TEXT_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class SiteSample:
    """One sample of a site.

    ``key``: sha256 hex (first 32 chars) of ``label + "\\0" + content``, ``#n`` added to the
    n-th identical sample of a class; ``label``: its class; ``source``: where it is, relative to
    the site folder (``train/<class>/<file>``, or ``train.csv:<line>``, 1-based)."""

    key: str
    label: str
    source: str


def _digest(label: str, content: bytes) -> str:
    return hashlib.sha256(label.encode() + b"\0" + content).hexdigest()[:32]


def _decode(path: Path) -> str:
    """The file as text; not UTF-8 is refused naming the line (``text._read_text`` names only the byte)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return text.removeprefix("\ufeff")  # a spreadsheet's byte-order mark is no part of the header


def _cell(path: Path, line: int, column: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path}:{line}: column {column!r} must be a string, got {json.dumps(value)}")
    if not str(value).strip():
        raise DataError(f"{path}:{line}: column {column!r} is empty (every row needs its text and its class)")
    return str(value)


def _raw_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line, row)`` of a CSV or JSONL file, the line where each row starts.

    A site's errors and sample sources name the line: JSONL by
    :func:`fedrecon.data.text.jsonl_rows`; CSV here, since a quoted field may span lines and
    ``text._read_rows`` (a whole dataset's reader) keeps no line numbers."""
    text = _decode(path)
    if path.suffix == ".jsonl":
        return jsonl_rows(path, text)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, header, end = [], None, 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num  # a quoted field may span lines: the row starts after the last
            if not fields:
                continue
            if header is None:
                header = fields
            elif len(fields) != len(header):
                raise DataError(f"{path}:{start}: {len(fields)} fields, the header row has {len(header)}")
            else:
                rows.append((start, dict(zip(header, fields))))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
    if header is None:
        raise DataError(f"{path}: empty; a CSV file starts with a header row naming its columns")
    return rows


class SiteData:
    """The samples of one site folder.

    Parameters
    ----------
    folder : path
        The site folder.
    read : str
        How the backbone reads a sample: ``ink`` or ``rgb`` images, or ``text``
        (:mod:`fedrecon.model.inputs`).
    image_size : int
        Side of a prepared image.
    text_column, label_column : str
        Columns of a text site's rows.
    """

    def __init__(self, folder, read: str, image_size: int = 28, text_column: str = "text", label_column: str = "label"):
        if read not in READS:
            raise DataError(f"{folder}: cannot read a site as {read!r} (allowed: {', '.join(READS)})")
        self.folder = Path(folder)
        self.read = read
        self.image_size = int(image_size)
        self.text_column = text_column
        self.label_column = label_column

    def samples(self, part: str = "train", classes: Sequence[str] | None = None) -> list[SiteSample]:
        """Every sample of the part, sorted by label, then source (a row's line compared as a number).

        ``train`` is required (DataError if the folder has none), ``test`` optional (empty list
        if absent). With ``classes`` (the scenario's vocabulary) a label outside it is a
        DataError naming the file (and line) and the label."""
        if part not in PARTS:
            raise DataError(f"{self.folder}: no part {part!r} (allowed: {', '.join(PARTS)})")
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: no such site folder")
        found = self._images(part) if self.read != "text" else [
            (label, (source, line), f"{source}:{line}", text.encode()) for source, line, text, label in self._rows(part)]
        if part == "train" and not found:
            raise DataError(f"{self.folder}: no training samples (expected {self._layout()})")
        if classes is not None:
            self._check_vocabulary(found, classes)
        seen: dict[str, int] = {}
        out = []
        for label, _, source, content in sorted(found, key=lambda f: (f[0], f[1])):
            key = _digest(label, content)
            seen[key] = seen.get(key, 0) + 1
            out.append(SiteSample(key if seen[key] == 1 else f"{key}#{seen[key]}", label, source))
        return out

    def inputs(self, samples: Sequence[SiteSample]) -> np.ndarray:
        """The samples as the backbone's input, in order.

        Images are read by :func:`fedrecon.model.inputs.read_image`, so a site's image is prepared
        exactly as ``fedrecon predict`` prepares it; text is an object array of the sentences. A
        sample whose content no longer matches its key (the file changed since it was listed) is
        refused: it would be learned under another sample's name."""
        if self.read == "text":
            rows: dict[str, dict[int, tuple[str, str]]] = {}
            texts = []
            for s in samples:
                name, _, line = s.source.rpartition(":")
                if not line.isdigit():
                    raise DataError(f"{self.folder}: {s.source!r} is no row of this site (file.csv:LINE)")
                if name not in rows:
                    rows[name] = {n: (t, lab) for _, n, t, lab in self._rows_of(self.folder / name, name)}
                text, label = rows[name].get(int(line), ("", ""))
                self._check_key(s, label, text.encode(), f"{self.folder / name}:{line}")
                texts.append(text)
            out = np.empty(len(texts), dtype=object)
            out[:] = texts
            return out
        prep = {"kind": self.read, "image_size": self.image_size}
        images = []
        for s in samples:
            path = self.folder / s.source
            self._check_key(s, s.label, path.read_bytes() if path.is_file() else b"", str(path))
            try:
                images.append(read_image(path, prep))
            except ModelError as exc:
                raise DataError(str(exc)) from None  # names the file: "<path>: not a readable image (..)"
        if not images:
            return np.zeros((0, 1 if self.read == "ink" else 3, self.image_size, self.image_size), np.float32)
        return np.stack(images)

    def _layout(self) -> str:
        if self.read == "text":
            return f"train.csv or train.jsonl with columns {self.text_column!r} and {self.label_column!r}"
        return "train/<class>/<image> files"

    def _images(self, part: str) -> list[tuple[str, tuple, str, bytes]]:
        root = self.folder / part
        if not root.is_dir():
            return []
        found = []
        for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
            if not entry.is_dir():
                raise DataError(f"{entry}: a file directly in {part}/ (images go in {part}/<class>/<image>)")
            files = sorted(f for f in entry.iterdir() if not f.name.startswith("."))
            if not files:
                raise DataError(f"{entry}: no images (every class folder needs at least one)")
            for f in files:
                if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                    raise DataError(f"{f}: not an image file (allowed in a class folder: {', '.join(IMAGE_SUFFIXES)})")
                source = f.relative_to(self.folder).as_posix()
                found.append((entry.name, (source, 0), source, f.read_bytes()))
        return found

    def _rows(self, part: str) -> list[tuple[str, int, str, str]]:
        files = [self.folder / f"{part}{suffix}" for suffix in TEXT_SUFFIXES]
        present = [f for f in files if f.is_file()]
        if len(present) > 1:
            raise DataError(f"{self.folder}: both {present[0].name} and {present[1].name}; a site holds one of them")
        rows = self._rows_of(present[0], present[0].name) if present else []
        if present and not rows and part == "train":
            raise DataError(f"{present[0]}: no rows (a site's training file needs at least one)")
        return rows

    def _rows_of(self, path: Path, name: str) -> list[tuple[str, int, str, str]]:
        """``(file name, line, text, label)`` of each row of a text file."""
        if not path.is_file():
            raise DataError(f"{path}: no such file (the site's samples were listed from it)")
        out = []
        for line, row in _raw_rows(path):
            for column in (self.text_column, self.label_column):
                if column not in row:
                    raise DataError(f"{path}:{line}: no column {column!r}; columns: {', '.join(map(str, row))}")
            text = _cell(path, line, self.text_column, row[self.text_column])
            out.append((name, line, text, _cell(path, line, self.label_column, row[self.label_column])))
        return out

    def _check_vocabulary(self, found, classes: Sequence[str]) -> None:
        allowed = set(classes)
        for label, _, source, _ in found:
            if label not in allowed:
                few = ", ".join(repr(c) for c in list(classes)[:5]) + (", .." if len(classes) > 5 else "")
                raise DataError(f"{self.folder / source}: class {label!r} is not one of the scenario's "
                                f"{len(classes)} classes ({few})")

    @staticmethod
    def _check_key(sample: SiteSample, label: str, content: bytes, where: str) -> None:
        if sample.key.partition("#")[0] != _digest(label, content):
            raise DataError(f"{where}: changed since its samples were listed (list them again)")
