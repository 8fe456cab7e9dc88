"""A site node's features by sample key, kept on its disk: a sample is embedded once.

A site scores its test part every evaluated round and its learned samples for the
unknown-input threshold; without this every one of them would pass through the backbone
each time. The features are the frozen backbone's, so they are keyed by its digest too.
Written here rather than with the dataset embedding cache (fedrecon.backbones.cache),
which indexes a fixed dataset by position: a site's samples come and go, by content.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedrecon.backbones.embed import embed


class SiteFeatures:
    """``features(site, samples)``: cached rows in order, the missing ones embedded and kept."""

    def __init__(self, folder: Path, backbone_digest: str, model, device):
        self.path = Path(folder) / f"features-{backbone_digest[:16]}.npz"
        self.model, self.device = model, device
        self.rows: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as npz:
                    self.rows = dict(zip(npz["keys"].tolist(), npz["features"]))
            except (OSError, ValueError, KeyError):
                self.rows = {}  # damaged: embedded again

    def features(self, site, samples) -> np.ndarray:
        missing = [x for x in samples if x.key not in self.rows]
        if missing:
            for x, row in zip(missing, embed(self.model, site.inputs(missing), self.device)):
                self.rows[x.key] = row
            self._save()
        if not samples:
            return np.zeros((0, 0))
        return np.stack([self.rows[x.key] for x in samples])

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp.npz")
        keys = list(self.rows)
        np.savez(tmp, keys=np.array(keys, dtype=str), features=np.stack([self.rows[k] for k in keys]))
        os.replace(tmp, self.path)
