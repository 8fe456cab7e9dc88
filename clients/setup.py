"""The run as a node holds it (:class:`Setup`), and where the backbone weights the
server sent are kept: a :class:`WeightStore` in the node's cache folder, else the
machine's. Light (no torch, no Flower): the learning code (clients/learner.py) reads it
without the node's message handling (clients/node.py), which imports the learning code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedrecon.backbones.weights import WeightStore, default_folder
from fedrecon.data.cache import DiskCache
from fedrecon.scenario.scenario import Scenario


class NoSetup(RuntimeError):
    """The node holds no setup for this run (it restarted since it got one): the server sends it again."""


@dataclass(frozen=True)
class Setup:
    """The run as this node sees it: the scenario (``data.root`` the node's own when
    its node config names a ``data-root``), the backbone's digest, the node's partition
    id, its disk cache of prepared samples and features (None: none), and whether the
    server sends the backbone's weights (else they are installed here)."""

    scenario: Scenario
    backbone_digest: str
    client: int
    cache: DiskCache | None = None
    weights_sent: bool = False


def node_cache(node_config: dict) -> DiskCache | None:
    """The node's disk cache: the node config's ``cache-dir`` (and ``cache-mb``; ``none``:
    off), else ``$FLWR_HOME/fedrecon-cache`` for a SuperNode (every message is a new
    process there), else none (a simulation's workers keep what they prepared in memory)."""
    folder = node_config.get("cache-dir") or (Path(os.environ["FLWR_HOME"]) / "fedrecon-cache"
                                              if os.environ.get("FLWR_HOME") else None)
    if not folder or str(folder) == "none":
        return None
    return DiskCache(Path(str(folder)), int(float(node_config.get("cache-mb", 2048)) * 2**20))


def weight_store(cache: DiskCache | None) -> WeightStore:
    """Where this node's processes find the weights the server sent: its cache folder, else the machine's."""
    return WeightStore(cache.folder / "weights" if cache is not None else default_folder())


def backbone_weights(setup: Setup) -> dict | None:
    """The backbone weights the server sent (None: installed here). A process that holds
    none, on a machine that holds none, cannot build the backbone: the server sends them again."""
    if not setup.weights_sent:
        return None
    weights = weight_store(setup.cache).get(setup.backbone_digest)
    if weights is None:
        raise NoSetup(f"this node holds no backbone weights of digest {setup.backbone_digest}; the server sends them again")
    return weights
