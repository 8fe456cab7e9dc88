"""The dataset type every loader returns: samples, class labels, class names and groups."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cached_property

import numpy as np


class DataError(ValueError):
    """A data file or folder is missing or malformed."""


class ClassDataset:
    """Samples with integer labels ``0..num_classes-1``.

    Parameters
    ----------
    inputs : np.ndarray or callable
        One row per sample: images ``(N, C, H, W)`` (float32 in 0..1, Omniglot ink = 1;
        or uint8 pixels), or an object array of strings. A callable taking no
        arguments is called the first time the samples are needed: a plan needs only
        the labels, so ``fedrecon validate`` never decodes images.
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

    def __init__(self, inputs: np.ndarray | Callable[[], np.ndarray], labels: np.ndarray, class_names: tuple[str, ...],
                 groups: tuple[str, ...], test_mask: np.ndarray | None = None):
        self._inputs = inputs
        self.labels = np.asarray(labels)
        self.class_names = tuple(class_names)
        self.groups = tuple(groups)
        self.test_mask = test_mask
        if len(self.groups) != len(self.class_names):
            raise DataError(f"{len(self.class_names)} class names but {len(self.groups)} groups")
        if self.labels.ndim != 1 or self.labels.dtype.kind not in "iu":
            raise DataError(f"labels must be a 1-d integer array, got {self.labels.dtype} {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"labels must be class indices 0..{len(self.class_names) - 1}")
        if test_mask is not None and np.asarray(test_mask).shape != self.labels.shape:
            raise DataError(f"test_mask must have one entry per sample ({len(self.labels)})")

    @cached_property
    def inputs(self) -> np.ndarray:
        inputs = self._inputs() if callable(self._inputs) else self._inputs
        if len(inputs) != len(self.labels):
            raise DataError(f"{len(inputs)} samples but {len(self.labels)} labels")
        return inputs

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def modality(self) -> str:
        """``text`` for strings, ``image`` for arrays of numbers (loads the samples)."""
        sample = self.inputs[:1]
        return "text" if sample.dtype == object or sample.dtype.kind == "U" else "image"

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


def frozen(*arrays: np.ndarray) -> None:
    """Mark arrays read-only: loaders cache datasets, and no caller may change them."""
    for a in arrays:
        a.setflags(write=False)
