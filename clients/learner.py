"""What a client does with a task: embed its new classes and summarise them."""

from __future__ import annotations

import hashlib

import numpy as np
from torch import nn

from fedrecon.backbones import embed, model_from_numpy, pick_device
from fedrecon.data import load_dataset
from fedrecon.stats import ClassStats

# Frozen backbones by content digest: immutable, so virtual clients that share a
# process may share them (their own state lives in Context.state).
_MODELS: dict[str, nn.Module] = {}


def state_digest(state: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key]).tobytes())
    return h.hexdigest()[:16]


def frozen_backbone(name: str, digest: str, state: dict[str, np.ndarray] | None) -> nn.Module:
    if digest not in _MODELS:
        if state is None:
            raise RuntimeError(f"backbone {digest} was never sent to this client")
        if state_digest(state) != digest:
            raise ValueError(f"backbone weights do not match digest {digest}")
        _MODELS[digest] = model_from_numpy(name, state)
    return _MODELS[digest]


def learn_task(
    task: dict,
    sample_index: np.ndarray,
    sample_labels: np.ndarray,
    backbone_state: dict[str, np.ndarray] | None,
    data_root: str,
) -> ClassStats:
    """Counts and feature sums of the task's classes from its training samples."""
    features = embed_samples(task, sample_index, sample_labels, backbone_state, data_root)
    return ClassStats.from_features(sample_labels, features)


def embed_samples(
    config: dict,
    sample_index: np.ndarray,
    sample_labels: np.ndarray,
    backbone_state: dict[str, np.ndarray] | None,
    data_root: str,
) -> np.ndarray:
    """Features of the samples the server named, after checking its labels against ours."""
    ds = load_dataset(config["dataset"], data_root, config["subset"], int(config["image_size"]))
    if len(sample_index) and (sample_index.min() < 0 or sample_index.max() >= len(ds.labels)):
        raise ValueError(f"sample index outside the dataset's {len(ds.labels)} samples")
    if not np.array_equal(ds.labels[sample_index], sample_labels):
        raise ValueError("the server's labels disagree with this client's copy of the dataset")
    model = frozen_backbone(config["backbone"], config["backbone_digest"], backbone_state)
    return embed(model, ds.inputs[sample_index], pick_device(config["device"]))
