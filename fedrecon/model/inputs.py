"""What a model reads and how raw inputs become what its backbone saw in the run.

The preprocessing is the dataset loader's own, written down at export time so that a
model folder needs neither the data nor the scenario:

- ``ink`` (Omniglot): a drawing made black and white (white background), its ink taken
  as 1, area-averaged to ``image_size`` square, one channel (:mod:`fedrecon.data.omniglot`);
- ``rgb`` (``image_folder``): RGB, resized bilinearly to ``image_size`` square, uint8
  pixels (:mod:`fedrecon.data.images`);
- ``text``: the sentences themselves; the backbone tokenizes them;
- ``arrays``: a plug-in dataset's samples, whose preparation fedrecon does not know:
  prepared arrays only, from Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrecon.model.folder import ModelError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
BUILT_IN = {"omniglot": "ink", "image_folder": "rgb", "clinc150": "text", "hwu64": "text", "text": "text"}


def preprocessing_of(data, modality: str) -> dict:
    """The manifest's ``preprocessing`` entry for a scenario's ``data`` section."""
    kind = BUILT_IN.get(data.dataset, "text" if modality == "text" else "arrays")
    return {"kind": kind, **({"image_size": int(data.image_size)} if kind in ("ink", "rgb") else {})}


def image_files(items: list[str]) -> list[Path]:
    """The image files ``items`` name: files as given, folders' images (recursively, sorted)."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            other = [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
            if other:
                raise ModelError(f"{other[0]}: not an image file (allowed in a folder: {', '.join(IMAGE_SUFFIXES)})")
            if not found:
                raise ModelError(f"{path}: no images in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ModelError(f"{item}: no such image file or folder (this model reads images)")
    return files


def read_image(path: Path, prep: dict) -> np.ndarray:
    """One image file prepared as the run's loader prepared its samples: ``(C, H, W)``."""
    from PIL import Image, UnidentifiedImageError

    size = int(prep["image_size"])
    try:
        with Image.open(path) as opened:
            if prep["kind"] == "ink":
                ink = ~np.asarray(opened.convert("1"), dtype=bool)
            else:
                rgb = opened.convert("RGB").resize((size, size), Image.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable image ({exc})") from None
    if prep["kind"] == "ink":
        from fedrecon.data.omniglot import resize_ink

        return resize_ink(ink[None], size)[0]
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def prepare_inputs(items, prep: dict) -> tuple[np.ndarray, list[str]]:
    """``items`` as the backbone's input array, and a name for each input (in order).

    Strings are sentences for a text model, image files or folders for an image model;
    a numpy array (or a list of them) is taken as inputs already prepared (a dataset's own samples).
    """
    kind = prep["kind"]
    if isinstance(items, (list, tuple)) and items and all(isinstance(i, np.ndarray) for i in items):
        items = np.stack(items)  # prepared samples one by one (a notebook's list of arrays)
    if isinstance(items, np.ndarray) and items.dtype != object and items.dtype.kind != "U":
        if kind == "text":
            raise ModelError(f"this model reads text, got an array of {items.dtype} {items.shape}")
        return items, [f"#{i}" for i in range(len(items))]
    items = [str(i) for i in items]
    if kind == "text":
        texts = np.empty(len(items), dtype=object)
        texts[:] = items
        return texts, items
    if kind == "arrays":
        raise ModelError("this model's dataset is a plug-in: fedrecon cannot read its raw inputs; "
                         "pass prepared arrays to Model.predict")
    files = image_files(items)
    if not files:
        return np.zeros((0, 1 if kind == "ink" else 3, prep["image_size"], prep["image_size"]), np.float32), []
    return np.stack([read_image(p, prep) for p in files]), [str(p) for p in files]
