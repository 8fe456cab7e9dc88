"""One training loop, for adapters and the fine-tuning baseline, and features with gradients."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrecon.learning.lora import Adapted
from fedrecon.learning.stats import ClassStats

# Seed stream of an adapter's batch order: np.random.default_rng([seed, ADAPTER_BATCHES, samples, ...]).
# Its own: under the adapters' initialisation stream (202) a task of n samples drew the
# same numbers as layer n's initial A.
ADAPTER_BATCHES = 404


def forward_features(model: nn.Module, batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """Features of a batch of raw inputs with autograd on (``embed`` is no-grad)."""
    if hasattr(model, "tokenize"):  # text: word pieces and mask
        ids, mask = model.tokenize(batch)
        return model(ids.to(device), mask.to(device))
    if hasattr(model, "preprocess"):  # pretrained images scale their own pixels
        return model(model.preprocess(batch).to(device))
    return model(torch.as_tensor(np.asarray(batch, dtype=np.float32)).to(device))


def autocast_bf16(device: torch.device, amp: bool):
    # bf16 keeps float32's exponent range: no loss scaling needed, unlike fp16
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def train_epoch(optim: torch.optim.Optimizer, order: np.ndarray, batch_size: int,
                loss_of: Callable[[np.ndarray], torch.Tensor]) -> float:
    """One pass over the samples in ``order``, a step a batch; the mean batch loss."""
    total, batches = 0.0, 0
    for b in range(0, len(order), batch_size):
        loss = loss_of(order[b : b + batch_size])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        total, batches = total + float(loss.detach()), batches + 1
    return total / max(batches, 1)


@torch.no_grad()
def _class_stats(model: nn.Module, inputs: np.ndarray, labels: np.ndarray, device: torch.device,
                 batch_size: int = 128) -> ClassStats:
    feats = np.concatenate([forward_features(model, inputs[b : b + batch_size], device).float().cpu().numpy()
                            for b in range(0, len(inputs), batch_size)])
    return ClassStats.from_features(labels, feats)


def train_adapter(adapted: Adapted, inputs: np.ndarray, labels: np.ndarray, lr: float, device: torch.device, seed: int,
                  factors: str = "AB", stream: tuple[int, ...] = (), negatives: np.ndarray | None = None) -> dict:
    """Fine-tune the adapter on one task's samples (its classes only, no old data).

    ``cross_entropy``: a cosine classifier over the task's classes, started at their
    class means and trained with the adapter (then dropped). ``prototypical``: logits
    are cosine similarities to the class means, recomputed under the current adapter
    at the start of each epoch. ``factors`` is ``"AB"``, or ``"B"`` (``ffa``: A frozen).
    ``seed`` (the scenario's) and ``stream`` (adapter steps: round and step) seed the
    sample order. ``negatives`` (k, dim): mean features of classes this task does not
    hold (``adapters.classifier: federation``, the other clients' classes); the logits
    span them too, fixed, so the task's features are pushed away from theirs.

    Returns the last epoch's mean loss, the seconds taken, and ``classes``: the task's
    counts and feature sums under the adapter it started from (what the server's
    federation-wide classifier is made of).
    """
    a = adapted.adapters
    start = time.perf_counter()
    model = adapted.model.to(device)
    # eval mode: batch-norm statistics and dropout stay as the backbone had them; only
    # the adapter's factors move
    model.eval()
    _, y = np.unique(labels, return_inverse=True)
    y_all = torch.as_tensor(y, device=device)
    # features: both puts frozen features beside the adapted ones; the loss sees only the adapted
    with adapted.adapted_only():
        params = adapted.parameters(factors)
        first = _class_stats(model, inputs, labels, device)
        means = torch.as_tensor(first.means(), device=device, dtype=torch.float32)
        head = nn.Parameter(means.clone()) if a.loss == "cross_entropy" else None
        others = (torch.as_tensor(negatives, device=device, dtype=torch.float32) if negatives is not None and len(negatives)
                  else torch.zeros((0, means.shape[1]), device=device))
        optim = torch.optim.AdamW(params + ([head] if head is not None else []), lr=lr, weight_decay=0.0)
        rng = np.random.default_rng([seed, ADAPTER_BATCHES, len(labels), *stream])
        last = float("nan")
        for epoch in range(a.epochs):
            if head is None and epoch:
                means = torch.as_tensor(_class_stats(model, inputs, labels, device).means(), device=device, dtype=torch.float32)

            def loss_of(idx: np.ndarray) -> torch.Tensor:
                with autocast_bf16(device, a.mixed_precision):
                    feats = forward_features(model, inputs[idx], device).float()
                weights = torch.cat([head if head is not None else means, others])
                logits = F.normalize(feats, dim=1) @ F.normalize(weights, dim=1).T / a.temperature
                return F.cross_entropy(logits, y_all[idx])

            last = train_epoch(optim, rng.permutation(len(labels)), a.batch_size, loss_of)
    return {"loss": last, "seconds": time.perf_counter() - start, "classes": first}


@torch.no_grad()
def embed_adapted(model: nn.Module, inputs: np.ndarray, device: torch.device, amp: bool = False,
                  batch_size: int = 256) -> np.ndarray:
    """Features (float64) under the current adapter, batch by batch (under
    ``adapters.features: both``, the frozen backbone's and then the adapted ones)."""
    model = model.to(device).eval()
    out = []
    for b in range(0, len(inputs), batch_size):
        with autocast_bf16(device, amp):
            out.append(forward_features(model, inputs[b : b + batch_size], device).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))
