"""The ``fedavg_finetune`` baseline: FedAvg of a backbone and a growing linear head.

The standard federated recipe applied to class-incremental tasks, with no replay:
each client starts a task from the global backbone and head, appends rows for its
task's new classes, trains backbone and head with cross-entropy over every class the
head knows on the task's samples only, and sends everything back; the server averages
the backbone weighted by the clients' sample counts, and each head row over the
clients that sent it. Old classes see no data, so their logits sink: the forgetting
the prototype merges avoid.

A model travels as one flat dict of arrays (fedrecon/learning/finetune_model.py, which
the server's checks read without torch).

No Flower here: the ClientApp, the strategy and the tests call these.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrecon.backbones.embed import state_to_numpy
from fedrecon.learning.finetune_model import BACKBONE, BIAS, IDS, WEIGHT, backbone_state, grow_head
from fedrecon.learning.training import autocast_bf16, forward_features, train_epoch

if TYPE_CHECKING:
    from fedrecon.scenario.sections import FinetuneConfig

# Seed stream of the fine-tuning batches (the plan uses 1..6, the ridge projection 101,
# the adapters 202 and 404; a test checks they differ).
_FINETUNE = 303


# --- the model as arrays -------------------------------------------------------------------

def initial_model(backbone: nn.Module, dim: int) -> dict[str, np.ndarray]:
    """The global model before any task: the pretrained backbone and an empty head."""
    return {**_backbone_arrays(backbone),
            IDS: np.zeros(0, np.int64), WEIGHT: np.zeros((0, dim), np.float32), BIAS: np.zeros(0, np.float32)}


def _backbone_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    # copies: a CPU tensor's numpy() shares its memory, and the module trains on
    return {BACKBONE + k: v.copy() for k, v in state_to_numpy(module).items()}


def load_backbone(module: nn.Module, model: Mapping[str, np.ndarray]) -> nn.Module:
    """Set ``module``'s weights (and buffers) to the model's backbone, strictly."""
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in backbone_state(model).items()})
    return module


# --- a client's task -----------------------------------------------------------------------

def train_task(module: nn.Module, model: Mapping[str, np.ndarray], inputs: np.ndarray, labels: np.ndarray,
               settings: FinetuneConfig, seed: int, device: torch.device, task_seed: int = 0) -> tuple[dict, dict]:
    """Fine-tune backbone and head on one task's samples; return the new model and
    ``{"loss", "seconds"}``. ``settings`` is the scenario's ``finetune`` section; ``seed``
    (the scenario's) and ``task_seed`` (the round) seed the batches.

    The head is grown by the task's classes first; the loss is cross-entropy over every
    row of the head (old classes included, which no sample supports any more).
    """
    start, device = time.perf_counter(), torch.device(device)
    model = grow_head(model, np.unique(labels))
    ids = model[IDS]
    module = load_backbone(module, model).to(device)
    # train mode: batch-norm statistics follow the task's data (and are averaged like weights)
    module.train()
    weight = nn.Parameter(torch.as_tensor(model[WEIGHT], device=device))
    bias = nn.Parameter(torch.as_tensor(model[BIAS], device=device))
    y_all = torch.as_tensor(np.searchsorted(ids, labels), device=device)
    optim = torch.optim.AdamW([{"params": list(module.parameters()), "lr": settings.lr},
                               {"params": [weight, bias], "lr": settings.head_lr}], weight_decay=settings.weight_decay)
    rng = np.random.default_rng([seed, _FINETUNE, task_seed])

    def loss_of(idx: np.ndarray) -> torch.Tensor:
        with autocast_bf16(device, True):  # bf16 on CUDA only
            feats = forward_features(module, inputs[idx], device).float()
        return F.cross_entropy(feats @ weight.T + bias, y_all[idx])

    last = float("nan")
    for _ in range(settings.epochs):
        last = train_epoch(optim, rng.permutation(len(labels)), settings.batch_size, loss_of)
    module.eval()
    trained = {**_backbone_arrays(module),
               IDS: ids, WEIGHT: weight.detach().cpu().numpy(), BIAS: bias.detach().cpu().numpy()}
    return trained, {"loss": last, "seconds": time.perf_counter() - start}


# --- the server's merge --------------------------------------------------------------------

def fedavg(current: Mapping[str, np.ndarray], updates: list[Mapping[str, np.ndarray]],
           weights: list[float]) -> dict[str, np.ndarray]:
    """FedAvg of checked client models, weighted by their sample counts.

    Every backbone entry is the weighted mean over all updates (integer buffers, such
    as batch norm's step counter, rounded back). Each head row is the weighted mean
    over the updates that hold its class; classes no update holds keep their rows.
    """
    if not updates:
        return dict(current)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    merged = {}
    for key in current:
        if not key.startswith(BACKBONE):
            continue
        mean = sum(wi * u[key].astype(np.float64) for wi, u in zip(w, updates))
        dtype = current[key].dtype
        # np.asarray: ufuncs turn 0-d arrays (batch norm's step counter) into scalars
        merged[key] = np.asarray(np.rint(mean) if dtype.kind in "iu" else mean, dtype=dtype)
    grown = grow_head(current, np.concatenate([u[IDS] for u in updates]))
    ids = grown[IDS]
    rows = np.zeros((len(ids), grown[WEIGHT].shape[1] + 1))
    mass = np.zeros(len(ids))
    for wi, u in zip(weights, updates):
        at = np.searchsorted(ids, u[IDS])
        rows[at] += wi * np.column_stack([u[WEIGHT], u[BIAS]]).astype(np.float64)
        mass[at] += wi
    held = mass > 0
    weight, bias = grown[WEIGHT].copy(), grown[BIAS].copy()
    weight[held] = (rows[held, :-1] / mass[held, None]).astype(np.float32)
    bias[held] = (rows[held, -1] / mass[held]).astype(np.float32)
    return {**merged, IDS: ids, WEIGHT: weight, BIAS: bias}


# --- evaluation ----------------------------------------------------------------------------

@torch.no_grad()
def predict(module: nn.Module, model: Mapping[str, np.ndarray], inputs: np.ndarray, device: torch.device,
            batch_size: int = 256) -> np.ndarray:
    """Class ids the model names for ``inputs`` (no head rows: -1 for every input)."""
    ids = model[IDS]
    if len(ids) == 0:
        return np.full(len(inputs), -1, dtype=np.int64)
    module = load_backbone(module, model).to(device).eval()
    weight = torch.as_tensor(model[WEIGHT], device=device)
    bias = torch.as_tensor(model[BIAS], device=device)
    out = []
    for b in range(0, len(inputs), batch_size):
        logits = forward_features(module, inputs[b : b + batch_size], device).float() @ weight.T + bias
        out.append(logits.argmax(1).cpu().numpy())
    return ids[np.concatenate(out)] if out else np.zeros(0, np.int64)


def class_counts(module: nn.Module, model: Mapping[str, np.ndarray], dataset, plan, classes: np.ndarray,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Per class of ``classes``: test samples the model names right, and test samples."""
    index, labels = plan.test_set(classes)
    hit = predict(module, model, dataset.inputs[index], device) == labels
    # test_set lists each class's samples in one block, in the order of ``classes``
    total = np.array([len(plan.test_samples[int(c)]) for c in classes], dtype=np.int64)
    block = np.repeat(np.arange(len(classes)), total)
    return np.bincount(block, weights=hit, minlength=len(classes)).astype(np.int64), total
