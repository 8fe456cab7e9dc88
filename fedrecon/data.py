"""Datasets as flat sample arrays with class and group labels."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
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
        Group of each class (Omniglot: its alphabet).
    """

    inputs: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    groups: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_indices(self) -> list[np.ndarray]:
        """Sample indices of each class, in sample order."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]


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


def load_dataset(name: str, root: str | Path, subset: str, image_size: int) -> ClassDataset:
    """The dataset a scenario's ``data`` section names."""
    loaders = {"omniglot": load_omniglot}
    if name not in loaders:
        raise DataError(f"unknown dataset {name!r}; allowed: {sorted(loaders)}")
    return loaders[name](root, subset, image_size)
