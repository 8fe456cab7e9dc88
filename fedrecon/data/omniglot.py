"""Omniglot: the shared ``images_<subset>.npz`` arrays, or the official PNG layout."""

from __future__ import annotations

import csv
import io
import re
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedrecon.data.dataset import ClassDataset, DataError, frozen
from fedrecon.paths import layout_missing

OMNIGLOT_SETS = ("background", "evaluation")


def area_weights(size: int, length: int) -> np.ndarray:
    """``(size, length)`` float32: row ``i`` averages input ``floor(i*length/size)`` up to
    ``ceil((i+1)*length/size)`` (the bins of torch's adaptive average pooling)."""
    weights = np.zeros((size, length), np.float32)
    for i in range(size):
        start, stop = (i * length) // size, -((-(i + 1) * length) // size)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def resize_ink(ink: np.ndarray, size: int, chunk: int = 2048) -> np.ndarray:
    """Area-average ``(N, h, w)`` ink maps to ``(N, 1, size, size)`` float32.

    Area averaging is linear: ``rows @ ink @ cols.T`` with :func:`area_weights`, which
    equals ``F.interpolate(mode="area")`` to float rounding and is several times faster
    on a CPU (two matrix products instead of a pooling pass over every pixel); chunks keep
    the float copy of a boolean dataset small."""
    import torch

    n, h, w = ink.shape
    if (h, w) == (size, size):
        return ink.astype(np.float32)[:, None]
    rows, cols = torch.from_numpy(area_weights(size, h)), torch.from_numpy(area_weights(size, w).T.copy())
    out = np.empty((n, 1, size, size), np.float32)
    for start in range(0, n, chunk):
        x = torch.from_numpy(ink[start:start + chunk].astype(np.float32))
        out[start:start + chunk, 0] = torch.matmul(rows, torch.matmul(x, cols)).numpy()
    return out


def _alphabets(root: Path, subset: str) -> list[tuple[str, int, int]]:
    path = root / "alphabets.csv"
    if not path.is_file():
        raise DataError(f"Omniglot alphabet table not found: {path}")
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("set") == subset]
        return [(r["alphabet"], int(r["first_char_id"]), int(r["last_char_id"])) for r in rows]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not an alphabet table (set, alphabet, first_char_id, last_char_id): {exc}") from None


def _npz_shape(path: Path, name: str = "images") -> tuple[int, ...]:
    """Shape of one array of an ``.npz`` file, read from its header (no image is decoded)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(f)
    except KeyError:
        raise DataError(f"{path}: no array {name!r} in it") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    return tuple(shape)


def load_omniglot(root: str | Path, subset: str = "evaluation", image_size: int = 28, cache=None) -> ClassDataset:
    """Load Omniglot from the shared ``images_<subset>.npz`` files.

    ``root`` is the folder holding ``omniglot/`` or the ``omniglot`` folder itself.
    Class ``i`` is the subset's ``i``-th character in the official order; its group
    is the character's alphabet. The drawings are decoded and resized the first time
    the samples are needed, or read from ``cache`` (a :class:`fedrecon.data.cache.DiskCache`)
    when an earlier process prepared them.
    """
    given = root = Path(root)
    if (root / "omniglot").is_dir():
        root = root / "omniglot"
    if subset not in OMNIGLOT_SETS:
        raise DataError(f"Omniglot subset must be one of {OMNIGLOT_SETS}, got {subset!r}")
    path = root / f"images_{subset}.npz"
    if not path.is_file():
        # named from the root the user gave, in the shared data folder's layout (the PNG
        # layout is the other one a root may hold)
        raise DataError(layout_missing(given, f"Omniglot {subset} set", f"omniglot/images_{subset}.npz (and alphabets.csv), "
                                       "or the official PNG layout <Alphabet>/characterNN/*.png"))
    return _load_cached(str(path), subset, image_size, cache)


@lru_cache(maxsize=4)
def _load_cached(path: str, subset: str, image_size: int, cache=None) -> ClassDataset:
    shape = _npz_shape(Path(path))
    if len(shape) != 4:
        raise DataError(f"{path}: images must be (characters, drawers, height, width), got shape {shape}")
    n_classes, n_drawers = shape[:2]
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), n_drawers)
    root = Path(path).parent
    names, groups = [], []
    for alphabet, first, last in _alphabets(root, subset):
        for char_id in range(first, last + 1):
            names.append(f"{alphabet}/character{char_id - first + 1:02d}")
            groups.append(alphabet)
    if len(names) != n_classes:
        raise DataError(f"{root / 'alphabets.csv'} lists {len(names)} {subset} characters, {path} has {n_classes}")
    frozen(labels)

    def decode() -> np.ndarray:
        try:
            with np.load(path) as npz:
                images = npz["images"]
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable .npz file ({exc})") from None
        return resize_ink(~images.reshape(n_classes * n_drawers, *images.shape[2:]), image_size)

    def inputs() -> np.ndarray:
        x = decode() if cache is None else cache.array(cache.key("omniglot", [Path(path)], image_size=image_size), decode)
        if x.flags.writeable:
            frozen(x)
        return x

    return ClassDataset(inputs, labels, tuple(names), tuple(groups))


_CHAR_DIR = re.compile(r"^character\d+$")


def load_omniglot_png(path: str | Path, image_size: int = 28) -> ClassDataset:
    """Load the official PNG layout ``<Alphabet>/characterNN/*.png``.

    ``path`` is a folder or a ``.zip`` holding that layout (optionally under one
    top-level folder, as the official zips are). Classes are ordered by alphabet,
    then character number; drawings by file name.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.suffix == ".zip" and path.is_file():
        try:
            with zipfile.ZipFile(path) as zf:
                files = {n: zf.read(n) for n in zf.namelist() if n.endswith(".png")}
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable zip file ({exc})") from None
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
            try:
                img = np.asarray(Image.open(io.BytesIO(files[name])).convert("1"), dtype=bool)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{path}: {name} is not a readable image ({exc})") from None
            inks.append(~img)
            labels.append(label)
        names.append(f"{key[0]}/character{key[1]:02d}")
        groups.append(key[0])
    shapes = {i.shape for i in inks}
    if len(shapes) != 1:
        raise DataError(f"{path}: drawings have different sizes {sorted(shapes)}")
    return ClassDataset(resize_ink(np.stack(inks), image_size), np.asarray(labels, dtype=np.int64), tuple(names), tuple(groups))


def load(data, cache=None) -> ClassDataset:
    """The ``omniglot`` dataset of a scenario's ``data`` section: the shared npz files
    under ``data.root``, or the official PNG layout when ``data.root`` is a zip or a
    folder of ``<Alphabet>/characterNN/`` drawings."""
    root = Path(data.root)
    png = root.suffix == ".zip" or (root.is_dir() and not (root / "omniglot").is_dir() and not any(root.glob("images_*.npz"))
                                    and (any(root.glob("*/character*")) or any(root.glob("*/*/character*"))))
    return load_omniglot_png(root, data.image_size) if png else load_omniglot(root, data.subset, data.image_size, cache)
