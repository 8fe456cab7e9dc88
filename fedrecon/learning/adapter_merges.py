"""Merge policies of LoRA adapters (``merge.adapters``), in numpy only.

An adapted layer's weight is ``W0 + D + s B A`` (``s = alpha / rank``): ``W0`` the frozen
backbone weight, ``D`` a frozen update folded in from earlier merges (``stack``), and
``A`` (``rank x fan_in``), ``B`` (``out x rank``) the trainable factors. A conv weight
``(out, in, k, k)`` is the matrix ``(out, in k k)``: a convolution is linear in its
weight, so every identity below holds for convs as for linears.

What the server keeps and how a round's client factors fold into it (weights: the
clients' sample counts):

- ``none``: nothing; each client keeps its own adapter.
- ``fedavg``: ``A`` and ``B`` averaged separately. The merged update ``s mean(B) mean(A)``
  misses the cross term ``s mean((B_i - mean B)(A_i - mean A))`` of the average update.
- ``ffa``: ``A`` drawn from a seed shared by all clients and never trained; ``B``
  averaged. ``s mean(B_i) A`` is exactly the average of the clients' weights.
- ``stack``: each client trains a fresh adapter on top of the folded ``D``; the server
  appends the clients' weighted factors to ``D = U V`` and re-factorises ``U V`` by
  QR and SVD, dropping only numerically zero singular values: exact, and the global
  rank never exceeds ``min(out, fan_in)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedrecon.registry import create, registrar

if TYPE_CHECKING:
    from fedrecon.scenario.sections import AdaptersConfig

# Seed stream of adapter initialisations: np.random.default_rng([seed, ADAPTER_INIT, layer, ...]).
# Apart from every other stream (the plan's 1..6 in fedrecon/plan/samples.py, the ridge
# projection's 101, the adapter batches' 404, the fine-tuning batches' 303; a test checks).
ADAPTER_INIT = 202
# Singular values below this fraction of the largest are numerical zeros of a stack.
_RANK_TOL = 1e-12

Shapes = Mapping[str, tuple[int, int]]


def initial_a(seed: int, layer: int, shape: tuple[int, int], *stream: int) -> np.ndarray:
    """Kaiming-uniform ``A`` (as PEFT's LoRA) from ``[seed, ADAPTER_INIT, layer, *stream]``."""
    bound = 1.0 / math.sqrt(shape[1])
    return np.random.default_rng([seed, ADAPTER_INIT, layer, *stream]).uniform(-bound, bound, shape).astype(np.float32)


class AdapterMerge(Protocol):
    """Folds one round's client factors into the server's adapter state.

    ``replies`` lists which factors a client sends (``"AB"`` or ``"B"``); ``init``
    returns the state before any merge; ``client_start`` the factors a client starts a
    task from; ``merge`` must not modify ``current`` (a rejected round keeps it).
    """

    replies: str

    def init(self, shapes: Shapes, adapters: AdaptersConfig, seed: int) -> dict[str, np.ndarray]: ...

    def client_start(self, state: Mapping[str, np.ndarray], shapes: Shapes, adapters: AdaptersConfig, seed: int,
                     client: int, round: int) -> dict[str, np.ndarray]: ...

    def merge(self, current: Mapping[str, np.ndarray], updates: list[Mapping[str, np.ndarray]],
              weights: list[float], adapters: AdaptersConfig) -> dict[str, np.ndarray]: ...


ADAPTER_MERGES: dict[str, Callable[[], AdapterMerge]] = {}
register = registrar(ADAPTER_MERGES)


def make_adapter_merge(name: str) -> AdapterMerge:
    return create(ADAPTER_MERGES, name, "merge.adapters")


def _normalised(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w <= 0).any():
        raise ValueError("merge weights must be positive")
    return w / w.sum()


def _weighted_mean(current, updates, weights) -> dict[str, np.ndarray]:
    """Each array of ``current``'s keys averaged over ``updates`` (in float64, sent as float32)."""
    w = _normalised(weights)
    return {k: sum(wi * np.asarray(u[k], np.float64) for wi, u in zip(w, updates)).astype(np.float32) for k in current}


def _shared_start(shapes: Shapes, adapters: AdaptersConfig, seed: int) -> dict[str, np.ndarray]:
    """A from the shared seed, B zero: every client and the server agree without a message."""
    state = {}
    for i, (n, (out, fan_in)) in enumerate(shapes.items()):
        state[f"{n}.A"] = initial_a(seed, i, (adapters.rank, fan_in))
        state[f"{n}.B"] = np.zeros((out, adapters.rank), np.float32)
    return state


@register("none")
class KeepOwn:
    """No merge: the server keeps nothing, a client its own adapter (``client_start``
    gets the client's last factors as ``state``)."""

    replies = ""

    def init(self, shapes, adapters, seed):
        return {}

    def client_start(self, state, shapes, adapters, seed, client, round):
        return dict(state) if state else _shared_start(shapes, adapters, seed)

    def merge(self, current, updates, weights, adapters):
        return dict(current)


@register("fedavg")
class FedAvgFactors:
    """A and B averaged separately (FedIT, Zhang et al. 2024): the common, inexact baseline."""

    replies = "AB"

    def init(self, shapes, adapters, seed):
        return _shared_start(shapes, adapters, seed)

    def client_start(self, state, shapes, adapters, seed, client, round):
        return dict(state)

    def merge(self, current, updates, weights, adapters):
        return _weighted_mean(current, updates, weights)


@register("ffa")
class FrozenA:
    """FFA-LoRA (Sun et al., 2024): A fixed at the shared seed, B averaged. The merged
    update ``s mean(B_i) A`` is exactly the clients' average update."""

    replies = "B"

    def init(self, shapes, adapters, seed):
        return {k: v for k, v in _shared_start(shapes, adapters, seed).items() if k.endswith(".B")}

    def client_start(self, state, shapes, adapters, seed, client, round):
        start = _shared_start(shapes, adapters, seed)
        start.update(state)
        return start

    def merge(self, current, updates, weights, adapters):
        return _weighted_mean(current, updates, weights)


@register("stack")
class StackRanks:
    """FLoRA (Wang et al., 2024): the clients' weighted factors are stacked and folded
    into ``D = U V``, refactorised so that the rank stays at most ``min(out, fan_in)``.

    Each client starts a task from ``D`` and a fresh adapter (``A`` seeded by client and
    round, ``B = 0``), so its update is ``s B_i A_i`` and the merge adds exactly
    ``s sum_i w_i B_i A_i``.
    """

    replies = "AB"

    def init(self, shapes, adapters, seed):
        return {f"{n}.{p}": np.zeros((out, 0) if p == "U" else (0, fan_in))
                for n, (out, fan_in) in shapes.items() for p in ("U", "V")}

    def client_start(self, state, shapes, adapters, seed, client, round):
        start = dict(state)
        for i, (n, (out, fan_in)) in enumerate(shapes.items()):
            start[f"{n}.A"] = initial_a(seed, i, (adapters.rank, fan_in), client + 1, round)
            start[f"{n}.B"] = np.zeros((out, adapters.rank), np.float32)
        return start

    def merge(self, current, updates, weights, adapters):
        w = _normalised(weights)
        merged = {}
        for key in current:
            if not key.endswith(".U"):
                continue
            n = key[:-2]
            u = np.concatenate([current[f"{n}.U"]] + [adapters.scale * wi * np.asarray(up[f"{n}.B"], np.float64)
                                                     for wi, up in zip(w, updates)], axis=1)
            v = np.concatenate([current[f"{n}.V"]] + [np.asarray(up[f"{n}.A"], np.float64) for up in updates], axis=0)
            merged[f"{n}.U"], merged[f"{n}.V"] = refactor(u, v)
        return merged


def refactor(u: np.ndarray, v: np.ndarray, tol: float = _RANK_TOL) -> tuple[np.ndarray, np.ndarray]:
    """``(U', V')`` with ``U' V' == U V`` (to rounding) and rank ``U'`` the numerical rank
    of ``U V``: thin QR of both factors, SVD of the small core, zero singular values dropped."""
    if u.shape[1] == 0:
        return u, v
    qu, ru = np.linalg.qr(u)
    qv, rv = np.linalg.qr(v.T)
    p, sigma, qt = np.linalg.svd(ru @ rv.T, full_matrices=False)
    keep = sigma > tol * max(sigma[0], np.finfo(float).tiny) if len(sigma) else sigma > 0
    root = np.sqrt(sigma[keep])
    return (qu @ p[:, keep]) * root, (root[:, None] * qt[keep]) @ qv.T


def global_updates(policy: str, state: Mapping[str, np.ndarray], shapes: Shapes, adapters: AdaptersConfig,
                   seed: int) -> dict[str, np.ndarray]:
    """Each layer's global weight update (out, fan_in), float64, under ``policy``'s state
    (``none``: zero, the server holds no adapter)."""
    out = {}
    full = {} if policy == "none" else make_adapter_merge(policy).client_start(state, shapes, adapters, seed, 0, 0)
    for n, shape in shapes.items():
        if policy == "stack":  # a client's fresh B is zero: the update is the folded U V
            out[n] = np.asarray(state[f"{n}.U"], np.float64) @ np.asarray(state[f"{n}.V"], np.float64)
        elif full:
            out[n] = adapters.scale * np.asarray(full[f"{n}.B"], np.float64) @ np.asarray(full[f"{n}.A"], np.float64)
        else:
            out[n] = np.zeros(shape)
    return out
