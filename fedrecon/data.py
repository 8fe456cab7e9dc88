"""Datasets as flat sample arrays with class and group labels."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class DataError(ValueError):
    """A data file or folder is missing or malformed."""


@dataclass(frozen=True)
class ClassDataset:
    """Samples with integer labels ``0..num_classes-1``.

    Parameters
    ----------
    inputs : np.ndarray
        One row per sample (images: ``(N, 1, H, W)`` float32 with ink = 1).
    labels : np.ndarray
        ``(N,)`` int64 class index of each sample.
    class_names : tuple of str
        Name of each class.
    groups : tuple of str
        Group of each class (Omniglot: its alphabet; CLINC150: its domain).
    test_mask : np.ndarray or None
        ``(N,)`` bool: the sample belongs to the dataset's official test split.
        None: the dataset has no such split (the plan draws test samples itself).
    """

    inputs: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    groups: tuple[str, ...]
    test_mask: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_indices(self, where: np.ndarray | None = None) -> list[np.ndarray]:
        """Sample indices of each class, in sample order (only samples where ``where`` is True)."""
        order = np.argsort(self.labels, kind="stable")
        if where is not None:
            order = order[where[order]]
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    def split_indices(self) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Per class: training candidates and official test samples (None without a test split)."""
        if self.test_mask is None:
            return self.class_indices(), None
        return self.class_indices(~self.test_mask), self.class_indices(self.test_mask)

    @cached_property
    def fingerprint(self) -> str:
        """Digest of the samples and labels: the embedding cache's key for this dataset."""
        h = hashlib.sha256()
        if self.inputs.dtype == object or self.inputs.dtype.kind == "U":
            h.update("\x00".join(str(t) for t in self.inputs).encode())
        else:
            h.update(np.ascontiguousarray(self.inputs).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]


OMNIGLOT_SETS = ("background", "evaluation")



def _resize_ink(ink: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``(N, h, w)`` ink maps to ``(N, 1, size, size)`` float32."""
    x = torch.from_numpy(ink.astype(np.float32)).unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.numpy()


def _omniglot_alphabets(root: Path, subset: str) -> list[tuple[str, int, int]]:
    path = root / "alphabets.csv"
    if not path.is_file():
        raise DataError(f"Omniglot alphabet table not found: {path}")
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["set"] == subset]
    return [(r["alphabet"], int(r["first_char_id"]), int(r["last_char_id"])) for r in rows]


def load_omniglot(root: str | Path, subset: str = "evaluation", image_size: int = 28) -> ClassDataset:
    """Load Omniglot from the shared ``images_<subset>.npz`` files.

    ``root`` is the folder holding ``omniglot/`` or the ``omniglot`` folder itself.
    Class ``i`` is the subset's ``i``-th character in the official order; its group
    is the character's alphabet.
    """
    root = Path(root)
    if (root / "omniglot").is_dir():
        root = root / "omniglot"
    if subset not in OMNIGLOT_SETS:
        raise DataError(f"Omniglot subset must be one of {OMNIGLOT_SETS}, got {subset!r}")
    path = root / f"images_{subset}.npz"
    if not path.is_file():
        raise DataError(f"Omniglot file not found: {path} (set data.root to the folder holding omniglot/)")
    return _load_omniglot_cached(str(path), subset, image_size)


@lru_cache(maxsize=4)
def _load_omniglot_cached(path: str, subset: str, image_size: int) -> ClassDataset:
    with np.load(path) as npz:
        images = npz["images"]
    n_classes, n_drawers = images.shape[:2]
    ink = ~images.reshape(n_classes * n_drawers, *images.shape[2:])
    inputs = _resize_ink(ink, image_size)
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), n_drawers)
    root = Path(path).parent
    names, groups = [], []
    offset = None
    for alphabet, first, last in _omniglot_alphabets(root, subset):
        offset = first if offset is None else offset
        for char_id in range(first, last + 1):
            names.append(f"{alphabet}/character{char_id - first + 1:02d}")
            groups.append(alphabet)
    if len(names) != n_classes:
        raise DataError(f"{root / 'alphabets.csv'} lists {len(names)} {subset} characters, {path} has {n_classes}")
    inputs.setflags(write=False)
    labels.setflags(write=False)
    return ClassDataset(inputs, labels, tuple(names), tuple(groups))


_CHAR_DIR = re.compile(r"^character\d+$")


def load_omniglot_png(path: str | Path, image_size: int = 28) -> ClassDataset:
    """Load the official PNG layout ``<Alphabet>/characterNN/*.png``.

    ``path`` is a folder or a ``.zip`` holding that layout (optionally under one
    top-level folder, as the official zips are). Classes are ordered by alphabet,
    then character number; drawings by file name.
    """
    from PIL import Image

    path = Path(path)
    if path.suffix == ".zip" and path.is_file():
        with zipfile.ZipFile(path) as zf:
            files = {n: zf.read(n) for n in zf.namelist() if n.endswith(".png")}
    elif path.is_dir():
        files = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*.png")}
    else:
        raise DataError(f"Omniglot PNG folder or zip not found: {path}")
    by_class: dict[tuple[str, int], list[str]] = {}
    for name in files:
        parts = Path(name).parts
        if len(parts) < 3 or not _CHAR_DIR.match(parts[-2]):
            raise DataError(f"{path}: {name} is not <Alphabet>/characterNN/<drawing>.png")
        by_class.setdefault((parts[-3], int(parts[-2][len("character") :])), []).append(name)
    if not by_class:
        raise DataError(f"{path}: no PNG drawings found")
    inks, labels, names, groups = [], [], [], []
    for label, key in enumerate(sorted(by_class)):
        for name in sorted(by_class[key]):
            img = np.asarray(Image.open(io.BytesIO(files[name])).convert("1"), dtype=bool)
            inks.append(~img)
            labels.append(label)
        names.append(f"{key[0]}/character{key[1]:02d}")
        groups.append(key[0])
    shapes = {i.shape for i in inks}
    if len(shapes) != 1:
        raise DataError(f"{path}: drawings have different sizes {sorted(shapes)}")
    inputs = _resize_ink(np.stack(inks), image_size)
    return ClassDataset(inputs, np.asarray(labels, dtype=np.int64), tuple(names), tuple(groups))


def load_dataset(name: str, root: str | Path, subset: str = "evaluation", image_size: int = 28, **options) -> ClassDataset:
    """The dataset a scenario's ``data`` section names.

    ``options`` are the section's other keys (``path``, ``test_path``, ``text_column``,
    ``label_column``, ``group_column``); each loader takes those it uses.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name](Path(root), subset, image_size, {k: v for k, v in options.items() if v not in (None, "")})


# --- text and image-folder datasets ----------------------------------------------------------------

def _text_dataset(train: list[tuple[str, str]], test: list[tuple[str, str]], classes: list[str],
                  groups: list[str]) -> ClassDataset:
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
    for a in (inputs, labels, test_mask):
        a.setflags(write=False)
    return ClassDataset(inputs, labels, tuple(classes), tuple(groups), test_mask)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (set data.root to the folder holding it)")
    return path


@lru_cache(maxsize=2)
def _clinc150(root: str) -> ClassDataset:
    folder = Path(root) / "clinc150" if (Path(root) / "clinc150").is_dir() else Path(root)
    data = json.loads(_require(folder / "data_full.json", "CLINC150 data_full.json").read_text())
    domains = json.loads(_require(folder / "domains.json", "CLINC150 domains.json").read_text())
    classes = [intent for intents in domains.values() for intent in intents]
    groups = [domain for domain, intents in domains.items() for _ in intents]
    # Official splits: train (100 per intent) and test (30); val and out-of-scope are not used.
    return _text_dataset([tuple(x) for x in data["train"]], [tuple(x) for x in data["test"]], classes, groups)


def load_clinc150(root: Path, subset: str, image_size: int, options: dict) -> ClassDataset:
    """CLINC150's 150 in-scope intents; an intent's group is its domain (10 of 15 intents)."""
    return _clinc150(str(root))


def _hwu_split(folder: Path, split: str) -> list[tuple[str, str]]:
    texts = _require(folder / split / "seq.in", f"HWU64 {split}/seq.in").read_text().splitlines()
    labels = _require(folder / split / "label", f"HWU64 {split}/label").read_text().splitlines()
    if len(texts) != len(labels):
        raise DataError(f"{folder / split}: {len(texts)} utterances but {len(labels)} labels")
    return [(t.strip(), lab.strip()) for t, lab in zip(texts, labels)]


@lru_cache(maxsize=2)
def _hwu64(root: str) -> ClassDataset:
    folder = Path(root) / "hwu64" if (Path(root) / "hwu64").is_dir() else Path(root)
    train, test = _hwu_split(folder, "train"), _hwu_split(folder, "test")
    classes = sorted({lab for _, lab in train + test})
    # The scenario (domain) of an intent is the part of its name before the first "_".
    return _text_dataset(train, test, classes, [c.split("_")[0] for c in classes])


def load_hwu64(root: Path, subset: str, image_size: int, options: dict) -> ClassDataset:
    """HWU64's 64 intents (official train and test splits; valid is not used); group: the intent's scenario."""
    return _hwu64(str(root))


def _read_rows(path: Path) -> list[dict]:
    _require(path, "text file")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix in (".csv", ".tsv"):
        with path.open(newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    raise DataError(f"{path}: a text file must end in .csv, .tsv or .jsonl")


def load_text_file(root: Path, subset: str, image_size: int, options: dict) -> ClassDataset:
    """A CSV/TSV/JSONL file of labelled texts; the user names the columns.

    ``path`` is the training file, ``test_path`` (optional) the official test file;
    ``group_column`` (optional) gives each class a group. Classes are sorted by label.
    """
    if "path" not in options:
        raise DataError("dataset text needs data.path (a .csv, .tsv or .jsonl file)")
    text_col, label_col = options.get("text_column"), options.get("label_column")
    if not text_col or not label_col:
        raise DataError("dataset text needs data.text_column and data.label_column")
    group_col = options.get("group_column")

    def pairs(path: Path) -> tuple[list[tuple[str, str]], dict[str, str]]:
        out, groups = [], {}
        for k, row in enumerate(_read_rows(path)):
            missing = [c for c in (text_col, label_col, group_col) if c and c not in row]
            if missing:
                raise DataError(f"{path}: row {k + 1} has no column {missing[0]!r}; columns: {', '.join(map(str, row))}")
            label = str(row[label_col])
            out.append((str(row[text_col]), label))
            if group_col:
                groups.setdefault(label, str(row[group_col]))
        return out, groups

    train, groups = pairs(Path(options["path"]))
    test, test_groups = pairs(Path(options["test_path"])) if "test_path" in options else ([], {})
    classes = sorted({lab for _, lab in train + test})
    groups = {**test_groups, **groups}
    ds = _text_dataset(train, test, classes, [groups.get(c, "all") for c in classes])
    return ds if "test_path" in options else ClassDataset(ds.inputs, ds.labels, ds.class_names, ds.groups)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _image_folder(folder: Path, image_size: int) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    out: dict[str, list[np.ndarray]] = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(class_dir.iterdir()):
            if f.suffix.lower() in _IMAGE_SUFFIXES:
                img = Image.open(f).convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                out.setdefault(class_dir.name, []).append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    if not out:
        raise DataError(f"{folder}: no <class>/<image> files found")
    return out


def load_image_folder(root: Path, subset: str, image_size: int, options: dict) -> ClassDataset:
    """Images as ``path/<class>/<image>`` (RGB, resized to ``image_size``, uint8 0..255);
    ``test_path`` (optional) in the same layout is the official test split."""
    if "path" not in options:
        raise DataError("dataset image_folder needs data.path (a folder of <class>/<image> files)")
    train = _image_folder(Path(options["path"]), image_size)
    test = _image_folder(Path(options["test_path"]), image_size) if "test_path" in options else {}
    classes = sorted(set(train) | set(test))
    index = {c: i for i, c in enumerate(classes)}
    items = [(img, index[c], False) for c, imgs in train.items() for img in imgs]
    items += [(img, index[c], True) for c, imgs in test.items() for img in imgs]
    inputs = np.stack([i for i, _, _ in items])
    labels = np.array([lab for _, lab, _ in items], dtype=np.int64)
    mask = np.array([t for _, _, t in items]) if test else None
    return ClassDataset(inputs, labels, tuple(classes), tuple("all" for _ in classes), mask)


def _omniglot_loader(root: Path, subset: str, image_size: int, options: dict) -> ClassDataset:
    return load_omniglot(root, subset, image_size)


DATASETS: dict[str, Callable[[Path, str, int, dict], ClassDataset]] = {
    "omniglot": _omniglot_loader,
    "clinc150": load_clinc150,
    "hwu64": load_hwu64,
    "text": load_text_file,
    "image_folder": load_image_folder,
}
# What a dataset's samples are, to match the backbone (fedrecon.backbones.MODALITY).
MODALITY = {"omniglot": "image", "clinc150": "text", "hwu64": "text", "text": "text", "image_folder": "image"}
