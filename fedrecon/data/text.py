"""Text datasets: CLINC150, HWU64 and any CSV/TSV/JSONL file of labelled texts."""

from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedrecon.data.dataset import ClassDataset, DataError, frozen
from fedrecon.paths import layout_missing


def text_dataset(train: list[tuple[str, str]], test: list[tuple[str, str]], classes: list[str],
                 groups: list[str], with_test: bool = True) -> ClassDataset:
    """``(text, label)`` pairs of the train and test splits; classes in the given order."""
    index = {c: i for i, c in enumerate(classes)}
    pairs = train + test
    unknown = sorted({lab for _, lab in pairs} - set(index))
    if unknown:
        raise DataError(f"labels without a class: {unknown[:5]}")
    inputs = np.empty(len(pairs), dtype=object)
    inputs[:] = [t for t, _ in pairs]
    labels = np.array([index[lab] for _, lab in pairs], dtype=np.int64)
    test_mask = np.arange(len(pairs)) >= len(train)
    frozen(inputs, labels, test_mask)
    return ClassDataset(inputs, labels, tuple(classes), tuple(groups), test_mask if with_test else None)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (set data.root to the folder holding it)")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


@lru_cache(maxsize=2)
def _clinc150(root: str) -> ClassDataset:
    folder = Path(root) / "clinc150" if (Path(root) / "clinc150").is_dir() else Path(root)
    if not (folder / "data_full.json").is_file():
        raise DataError(layout_missing(root, "CLINC150", "clinc150/data_full.json and clinc150/domains.json"))
    data = _read_json(_require(folder / "data_full.json", "CLINC150 data_full.json"))
    domains = _read_json(_require(folder / "domains.json", "CLINC150 domains.json"))
    try:
        classes = [intent for intents in domains.values() for intent in intents]
        groups = [domain for domain, intents in domains.items() for _ in intents]
        # Official splits: train (100 per intent) and test (30); val is not used, out-of-scope only by
        # clinc150_out_of_scope.
        train, test = [(str(t), str(lab)) for t, lab in data["train"]], [(str(t), str(lab)) for t, lab in data["test"]]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{folder}: data_full.json (train, test: [text, intent] pairs) or domains.json "
                        f"(domain: [intents]) has another layout ({type(exc).__name__}: {exc})") from None
    return text_dataset(train, test, classes, groups)


def load_clinc150(data) -> ClassDataset:
    """CLINC150's 150 in-scope intents; an intent's group is its domain (10 of 15 intents)."""
    return _clinc150(str(data.root))


@lru_cache(maxsize=2)
def _clinc150_out_of_scope(root: str) -> ClassDataset:
    folder = Path(root) / "clinc150" if (Path(root) / "clinc150").is_dir() else Path(root)
    data = _read_json(_require(folder / "data_full.json", "CLINC150 data_full.json"))
    try:
        texts = [str(t) for t, _ in data["oos_test"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{folder}: data_full.json has no oos_test of [text, label] pairs "
                        f"({type(exc).__name__}: {exc})") from None
    inputs = np.empty(len(texts), dtype=object)
    inputs[:] = texts
    labels = np.zeros(len(texts), dtype=np.int64)
    frozen(inputs, labels)
    return ClassDataset(inputs, labels, ("oos",), ("oos",))


def clinc150_out_of_scope(data) -> ClassDataset:
    """CLINC150's out-of-scope test sentences (``oos_test``, 1,000), a dataset of their own
    (one class ``oos``) for the unknown-input score's evaluation: :func:`load_clinc150`'s
    classes and sample indices stay as they are, and these have an embedding-cache key of
    their own (their fingerprint)."""
    return _clinc150_out_of_scope(str(data.root))


def _hwu_split(folder: Path, split: str) -> list[tuple[str, str]]:
    texts = _read_text(_require(folder / split / "seq.in", f"HWU64 {split}/seq.in")).splitlines()
    labels = _read_text(_require(folder / split / "label", f"HWU64 {split}/label")).splitlines()
    if len(texts) != len(labels):
        raise DataError(f"{folder / split}: {len(texts)} utterances but {len(labels)} labels")
    return [(t.strip(), lab.strip()) for t, lab in zip(texts, labels)]


@lru_cache(maxsize=2)
def _hwu64(root: str) -> ClassDataset:
    folder = Path(root) / "hwu64" if (Path(root) / "hwu64").is_dir() else Path(root)
    if not (folder / "train").is_dir():
        raise DataError(layout_missing(root, "HWU64", "hwu64/train/seq.in, hwu64/train/label and the same in hwu64/test/"))
    train, test = _hwu_split(folder, "train"), _hwu_split(folder, "test")
    classes = sorted({lab for _, lab in train + test})
    # The scenario (domain) of an intent is the part of its name before the first "_".
    return text_dataset(train, test, classes, [c.split("_")[0] for c in classes])


def load_hwu64(data) -> ClassDataset:
    """HWU64's 64 intents (official train and test splits; valid is not used); group: the intent's scenario."""
    return _hwu64(str(data.root))


def jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """``(line, object)`` of each non-blank line of a JSONL file's ``text`` (a line that is no
    JSON object: :class:`DataError` naming it)."""
    rows = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line}: not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line}: a line must be a JSON object, got {type(row).__name__}")
        rows.append((line, row))
    return rows


def _read_rows(path: Path) -> list[dict]:
    _require(path, "text file")
    if path.suffix == ".jsonl":
        return [row for _, row in jsonl_rows(path, _read_text(path))]
    if path.suffix in (".csv", ".tsv"):
        reader = csv.DictReader(_read_text(path).splitlines(), delimiter="\t" if path.suffix == ".tsv" else ",")
        try:
            return list(reader)
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
    raise DataError(f"{path}: a text file must end in .csv, .tsv or .jsonl")


def _pairs(path: Path, text_col: str, label_col: str, group_col: str | None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    out, groups = [], {}
    for k, row in enumerate(_read_rows(path)):
        missing = [c for c in (text_col, label_col, group_col) if c and c not in row]
        if missing:
            raise DataError(f"{path}: row {k + 1} has no column {missing[0]!r}; columns: {', '.join(map(str, row))}")
        label = str(row[label_col])
        if not label.strip():
            raise DataError(f"{path}: row {k + 1} has an empty {label_col!r}: every row needs its class")
        out.append((str(row[text_col]), label))
        if group_col:
            groups.setdefault(label, str(row[group_col]))
    if not out:
        raise DataError(f"{path}: no rows")
    return out, groups


def load_text_file(data) -> ClassDataset:
    """A CSV/TSV/JSONL file of labelled texts; the scenario names the columns.

    ``data.path`` is the training file, ``data.test_path`` (optional) the official test
    file; ``data.group_column`` (optional) gives each class a group. Classes are sorted
    by label.
    """
    if not data.path or not data.text_column or not data.label_column:
        raise DataError("dataset text needs data.path, data.text_column and data.label_column")
    train, groups = _pairs(Path(data.path), data.text_column, data.label_column, data.group_column)
    test, test_groups = _pairs(Path(data.test_path), data.text_column, data.label_column, data.group_column) \
        if data.test_path else ([], {})
    train_classes = {lab for _, lab in train}
    only_test = sorted({lab for _, lab in test} - train_classes)
    if only_test:
        raise DataError(f"{data.test_path}: classes {only_test[:3]} have test rows but no training row in {data.path}")
    classes = sorted(train_classes)
    groups = {**test_groups, **groups}
    return text_dataset(train, test, classes, [groups.get(c, "all") for c in classes], with_test=bool(data.test_path))
