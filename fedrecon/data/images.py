"""Image folders: ``<class>/<image>`` files, RGB, resized, kept as uint8 pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrecon.data.dataset import ClassDataset, DataError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _image_folder(folder: Path, image_size: int) -> dict[str, list[np.ndarray]]:
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    out: dict[str, list[np.ndarray]] = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # hidden files (.DS_Store) are no samples; any other file must be an image
        files = sorted(f for f in class_dir.iterdir() if not f.name.startswith("."))
        if not files:
            raise DataError(f"{class_dir}: no images (every class folder needs at least one)")
        for f in files:
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                raise DataError(f"{f}: not an image file (allowed: {', '.join(sorted(_IMAGE_SUFFIXES))})")
            try:
                with Image.open(f) as opened:
                    img = opened.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataError(f"{f}: not a readable image ({exc})") from None
            out.setdefault(class_dir.name, []).append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    if not out:
        raise DataError(f"{folder}: no <class>/<image> files found")
    return out


def load_image_folder(data) -> ClassDataset:
    """Images as ``data.path/<class>/<image>`` (RGB, resized to ``data.image_size``,
    uint8 0..255); ``data.test_path`` (optional) in the same layout is the official test split."""
    if not data.path:
        raise DataError("dataset image_folder needs data.path (a folder of <class>/<image> files)")
    train = _image_folder(Path(data.path), data.image_size)
    test = _image_folder(Path(data.test_path), data.image_size) if data.test_path else {}
    only_test = sorted(set(test) - set(train))
    if only_test:
        raise DataError(f"{data.test_path}: classes {only_test[:3]} have test images but no training image in {data.path}")
    classes = sorted(train)
    index = {c: i for i, c in enumerate(classes)}
    items = [(img, index[c], False) for c, imgs in train.items() for img in imgs]
    items += [(img, index[c], True) for c, imgs in test.items() for img in imgs]
    inputs = np.stack([i for i, _, _ in items])
    labels = np.array([lab for _, lab, _ in items], dtype=np.int64)
    mask = np.array([t for _, _, t in items]) if test else None
    return ClassDataset(inputs, labels, tuple(classes), tuple("all" for _ in classes), mask)
