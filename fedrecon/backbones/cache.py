"""Embedding cache: a frozen backbone embeds each sample of a dataset once.

Features live in memory for the process and, when a folder is given, on disk under
``<folder>/<backbone digest>-<dataset fingerprint>/`` as shards ``<random>.npz``
(``index``, ``features``). A shard is written to a temporary name and renamed, so
clients and the server in several processes may fill one cache at the same time;
readers take every finished shard. Keys name the exact weights and the exact
samples, so a stale entry cannot be read.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from torch import nn

from fedrecon.backbones.embed import embed
from fedrecon.data.dataset import ClassDataset

# (cache key) -> sample index -> feature row, for this process
_MEMORY: dict[str, dict[int, np.ndarray]] = {}
_SHARDS_READ: dict[str, set[str]] = {}


class EmbeddingCache:
    """Features of one backbone (by weight digest) on one dataset (by fingerprint)."""

    def __init__(self, backbone_digest: str, dataset_fingerprint: str, folder: str | Path | None = None):
        self.key = f"{backbone_digest}-{dataset_fingerprint}"
        self.folder = Path(folder).expanduser() / self.key if folder else None
        self.rows = _MEMORY.setdefault(self.key, {})

    def _read_disk(self) -> None:
        if self.folder is None or not self.folder.is_dir():
            return
        read = _SHARDS_READ.setdefault(str(self.folder), set())
        for shard in sorted(self.folder.glob("*.npz")):
            # pathlib's "*" matches dot files too: another process's ".<name>.tmp.npz" is still being written
            if shard.name in read or shard.name.startswith("."):
                continue
            with np.load(shard) as z:
                for i, row in zip(z["index"].tolist(), z["features"]):
                    self.rows.setdefault(i, row)
            read.add(shard.name)

    def lookup(self, index: np.ndarray) -> list[int]:
        """Sample indices of ``index`` that are not cached (unique, sorted)."""
        missing = sorted({int(i) for i in index} - self.rows.keys())
        if missing:
            self._read_disk()
            missing = [i for i in missing if i not in self.rows]
        return missing

    def store(self, index: list[int], features: np.ndarray) -> None:
        for i, row in zip(index, features):
            self.rows[int(i)] = row
        if self.folder is not None and len(index):
            self.folder.mkdir(parents=True, exist_ok=True)
            name = uuid.uuid4().hex
            tmp = self.folder / f".{name}.tmp.npz"
            np.savez(tmp, index=np.asarray(index, dtype=np.int64), features=features)
            os.replace(tmp, self.folder / f"{name}.npz")
            _SHARDS_READ.setdefault(str(self.folder), set()).add(f"{name}.npz")

    def get(self, index: np.ndarray) -> np.ndarray:
        return np.stack([self.rows[int(i)] for i in index]) if len(index) else np.zeros((0, 0))


def embed_samples(model: nn.Module, dataset: ClassDataset, index: np.ndarray, device,
                  cache: EmbeddingCache | None = None) -> np.ndarray:
    """Features (float64) of ``dataset`` samples ``index``; only uncached ones go through the backbone."""
    index = np.asarray(index, dtype=np.int64)
    if cache is None:
        return embed(model, dataset.inputs[index], device)
    missing = cache.lookup(index)
    if missing:
        cache.store(missing, embed(model, dataset.inputs[np.array(missing)], device))
    if not len(index):
        return embed(model, dataset.inputs[index], device)
    return cache.get(index)
