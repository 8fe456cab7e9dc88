"""LoRA adapters on a frozen backbone: injection, local training, merge policies, drift.

An adapted layer's weight is ``W0 + D + s B A`` (``s = alpha / rank``): ``W0`` the frozen
backbone weight, ``D`` a frozen update folded in from earlier merges (``stack``), and
``A`` (``rank x fan_in``), ``B`` (``out x rank``) the trainable factors. A conv weight
``(out, in, k, k)`` is the matrix ``(out, in k k)``: a convolution is linear in its
weight, so every identity below holds for convs as for linears.

The weight is rewritten by a :mod:`torch.nn.utils.parametrize` parametrization, so
any module with a ``weight`` (``Linear``, ``Conv2d``, EfficientNet's ``SameConv``)
is adapted without touching its ``forward``.

Merge policies (``merge.adapters``) say what the server keeps and how a round's
client factors fold into it (weights: the clients' sample counts):

- ``none``: nothing; each client keeps its own adapter.
- ``fedavg``: ``A`` and ``B`` averaged separately. The merged update ``s mean(B) mean(A)``
  misses the cross term ``s mean((B_i - mean B)(A_i - mean A))`` of the average update.
- ``ffa``: ``A`` drawn from a seed shared by all clients and never trained; ``B``
  averaged. ``s mean(B_i) A`` is exactly the average of the clients' weights.
- ``stack``: each client trains a fresh adapter on top of the folded ``D``; the server
  appends the clients' weighted factors to ``D = U V`` and re-factorises ``U V`` by
  QR and SVD, dropping only numerically zero singular values: exact, and the global
  rank never exceeds ``min(out, fan_in)``.

No Flower here: the ClientApp, the strategy and ``bench/adapters.py`` call these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from fedrecon.registry import create, registrar

# Seed stream of adapter initialisations: np.random.default_rng([seed, _ADAPTER, layer, ...]).
# The plan's streams are 1..5 and the ridge projection is 101; this one is apart.
_ADAPTER = 202
# Singular values below this fraction of the largest are numerical zeros of a stack.
_RANK_TOL = 1e-12


# --- settings ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdapterSettings:
    """What the scenario's ``adapters`` section and ``merge.adapters`` say (flat scalars,
    so that they travel in a task message's ConfigRecord).

    ``schedule`` is ``frozen`` (no adapter: the default), ``first_task`` (a client
    trains on its first task only) or ``every_task`` (each task, the later ones at
    ``lr_later``). ``targets`` is a comma-separated list of module-name substrings, or
    empty for the backbone's default layers. ``rounds`` > 0: the clients that train in
    a round first run that many federated rounds of adapter training (each ``epochs``
    long, merged by the policy), then summarise their tasks under the merged adapter.
    """

    schedule: str = "frozen"
    merge: str = "none"
    rank: int = 4
    alpha: float = 8.0
    targets: str = ""
    lr: float = 1e-3
    lr_later: float = 1e-4
    epochs: int = 1
    batch_size: int = 32
    loss: str = "cross_entropy"
    temperature: float = 0.1
    seed: int = 0
    staleness: str = "keep"
    drift_sigma: float = 0.5
    amp: bool = True
    rounds: int = 0

    @property
    def active(self) -> bool:
        return self.schedule != "frozen"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_config(self) -> dict:
        return {f"adapter_{f.name}": getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_config(cls, config: Mapping) -> "AdapterSettings":
        """Settings from a task message; a message without them means frozen."""
        kw = {}
        for f in fields(cls):
            key = f"adapter_{f.name}"
            if key in config:
                kw[f.name] = type(getattr(cls(), f.name))(config[key])
        return cls(**kw)

    def lr_for(self, task_number: int) -> float:
        """Learning rate of the client's ``task_number``-th task (0-based); 0: no training."""
        if self.schedule == "first_task":
            return self.lr if task_number == 0 else 0.0
        if self.schedule == "every_task":
            return self.lr if task_number == 0 else self.lr_later
        return 0.0


# --- targets -------------------------------------------------------------------------------

def _conv4_targets(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


def _minilm_targets(name: str, module: nn.Module) -> bool:
    # attention (query, key, value, output) and MLP (intermediate, output) linears; not the pooler
    return isinstance(module, nn.Linear) and name.startswith("encoder.layer.")


def _pointwise_targets(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


DEFAULT_TARGETS: dict[str, Callable[[str, nn.Module], bool]] = {
    "conv4": _conv4_targets,
    "all-minilm-l6-v2": _minilm_targets,
    "efficientnet-lite0": _pointwise_targets,
}


def target_layers(model: nn.Module, backbone: str, targets: str = "") -> list[str]:
    """Names of the modules an adapter goes on, in ``named_modules`` order."""
    if targets:
        parts = [t.strip() for t in targets.split(",") if t.strip()]
        names = [n for n, m in model.named_modules()
                 if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.ndim in (2, 4)
                 and any(p in n for p in parts)]
    else:
        if backbone not in DEFAULT_TARGETS:
            raise ValueError(f"backbone {backbone!r} has no adapter targets; allowed: {sorted(DEFAULT_TARGETS)}")
        names = [n for n, m in model.named_modules() if DEFAULT_TARGETS[backbone](n, m)]
    if not names:
        raise ValueError(f"no layer of {backbone} matches adapters.targets {targets!r}")
    return names


# --- the LoRA parametrization --------------------------------------------------------------

class LoRA(nn.Module):
    """``W -> W + D + s B A`` for a weight of shape ``shape``: ``A`` (rank, fan_in),
    ``B`` (out, rank) trainable, ``D`` (out, fan_in) a frozen buffer."""

    def __init__(self, shape: tuple[int, ...], rank: int, scale: float):
        super().__init__()
        self.shape = tuple(shape)
        out, fan_in = shape[0], int(np.prod(shape[1:]))
        self.scale = scale
        self.A = nn.Parameter(torch.zeros(rank, fan_in))
        self.B = nn.Parameter(torch.zeros(out, rank))
        self.register_buffer("D", torch.zeros(out, fan_in))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.D + self.scale * (self.B @ self.A)
        return weight + delta.to(weight.dtype).view(self.shape)

    def update(self) -> torch.Tensor:
        """``D + s B A`` (out, fan_in): the layer's weight minus the backbone's."""
        return self.D + self.scale * (self.B @ self.A)


def initial_a(seed: int, layer: int, shape: tuple[int, int], *stream: int) -> np.ndarray:
    """Kaiming-uniform ``A`` (as PEFT's LoRA) from ``[seed, _ADAPTER, layer, *stream]``."""
    bound = 1.0 / math.sqrt(shape[1])
    return np.random.default_rng([seed, _ADAPTER, layer, *stream]).uniform(-bound, bound, shape).astype(np.float32)


class Adapted:
    """A backbone with LoRA on its target layers; ``model`` is the same module, adapted.

    Parameters
    ----------
    model : nn.Module
        The backbone; its own parameters are frozen here (``requires_grad=False``).
    backbone : str
        Its name (picks the default targets).
    settings : AdapterSettings
        Rank, scale and targets.
    """

    def __init__(self, model: nn.Module, backbone: str, settings: AdapterSettings):
        self.model, self.settings = model, settings
        for p in model.parameters():
            p.requires_grad_(False)
        self.names = target_layers(model, backbone, settings.targets)
        modules = dict(model.named_modules())
        self.lora: dict[str, LoRA] = {}
        for name in self.names:
            module = modules[name]
            lora = LoRA(tuple(module.weight.shape), settings.rank, settings.scale).to(module.weight.device)
            parametrize.register_parametrization(module, "weight", lora)
            self.lora[name] = lora

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(out, fan_in) of each adapted layer."""
        return {n: tuple(m.D.shape) for n, m in self.lora.items()}

    def factors(self) -> dict[str, np.ndarray]:
        """``<layer>.A`` and ``<layer>.B`` as float32 arrays (copies: on CPU ``.numpy()``
        would share memory with the parameters, and the next task's training would
        rewrite a reply already handed over)."""
        out = {}
        for n, m in self.lora.items():
            out[f"{n}.A"] = m.A.detach().float().cpu().numpy().copy()
            out[f"{n}.B"] = m.B.detach().float().cpu().numpy().copy()
        return out

    @torch.no_grad()
    def load(self, state: Mapping[str, np.ndarray]) -> None:
        """Set every layer's ``A`` and ``B`` from ``<layer>.A`` / ``<layer>.B``, and ``D``
        from ``<layer>.U @ <layer>.V`` or ``<layer>.D`` (zero when ``state`` has neither)."""
        for n, m in self.lora.items():
            m.A.copy_(torch.as_tensor(np.asarray(state[f"{n}.A"], dtype=np.float32)))
            m.B.copy_(torch.as_tensor(np.asarray(state[f"{n}.B"], dtype=np.float32)))
            if f"{n}.U" in state:
                d = np.asarray(state[f"{n}.U"], np.float64) @ np.asarray(state[f"{n}.V"], np.float64)
                m.D.copy_(torch.as_tensor(d.astype(np.float32)))
            elif f"{n}.D" in state:
                m.D.copy_(torch.as_tensor(np.asarray(state[f"{n}.D"], dtype=np.float32)))
            else:
                m.D.zero_()

    @torch.no_grad()
    def updates(self) -> dict[str, np.ndarray]:
        """Each layer's ``D + s B A`` as float64 (out, fan_in)."""
        return {n: m.update().double().cpu().numpy() for n, m in self.lora.items()}

    def parameters(self, factors: str = "AB") -> list[nn.Parameter]:
        return [getattr(m, f) for m in self.lora.values() for f in factors]

    def digest_state(self) -> dict[str, np.ndarray]:
        """Arrays that fix the adapted weights (for an embedding-cache key)."""
        return {f"{n}.W": u.astype(np.float32) for n, u in self.updates().items()}


# --- forward with gradients ----------------------------------------------------------------

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


def train_adapter(adapted: Adapted, inputs: np.ndarray, labels: np.ndarray, lr: float, device: torch.device,
                  factors: str = "AB", stream: tuple[int, ...] = ()) -> dict[str, float]:
    """Fine-tune the adapter on one task's samples (its classes only, no old data).

    ``cross_entropy``: a cosine classifier over the task's classes, started at their
    class means and trained with the adapter (then dropped). ``prototypical``: logits
    are cosine similarities to the class means, recomputed under the current adapter
    at the start of each epoch. ``factors`` is ``"AB"``, or ``"B"`` (``ffa``: A frozen).
    ``stream`` extends the seed of the sample order (adapter rounds: round and step).

    Returns the last epoch's mean loss and the seconds taken.
    """
    import time

    s = adapted.settings
    start = time.perf_counter()
    model = adapted.model.to(device)
    # eval mode: batch-norm statistics and dropout stay as the backbone had them; only
    # the adapter's factors move
    model.eval()
    classes, y = np.unique(labels, return_inverse=True)
    y_all = torch.as_tensor(y, device=device)
    params = adapted.parameters(factors)
    means = torch.as_tensor(_class_means(model, inputs, y, len(classes), device), device=device, dtype=torch.float32)
    head = nn.Parameter(means.clone()) if s.loss == "cross_entropy" else None
    optim = torch.optim.AdamW(params + ([head] if head is not None else []), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([s.seed, _ADAPTER, len(labels), *stream])
    last = float("nan")
    for epoch in range(s.epochs):
        if head is None and epoch:
            means = torch.as_tensor(_class_means(model, inputs, y, len(classes), device), device=device, dtype=torch.float32)

        def loss_of(idx: np.ndarray) -> torch.Tensor:
            with autocast_bf16(device, s.amp):
                feats = forward_features(model, inputs[idx], device).float()
            weights = head if head is not None else means
            logits = F.normalize(feats, dim=1) @ F.normalize(weights, dim=1).T / s.temperature
            return F.cross_entropy(logits, y_all[idx])

        last = train_epoch(optim, rng.permutation(len(labels)), s.batch_size, loss_of)
    return {"loss": last, "seconds": time.perf_counter() - start}


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
def _class_means(model: nn.Module, inputs: np.ndarray, y: np.ndarray, k: int, device: torch.device,
                 batch_size: int = 128) -> np.ndarray:
    feats = np.concatenate([forward_features(model, inputs[b : b + batch_size], device).float().cpu().numpy()
                            for b in range(0, len(inputs), batch_size)])
    sums = np.zeros((k, feats.shape[1]))
    np.add.at(sums, y, feats)
    return sums / np.bincount(y, minlength=k)[:, None]


@torch.no_grad()
def embed_adapted(model: nn.Module, inputs: np.ndarray, device: torch.device, amp: bool = False,
                  batch_size: int = 256) -> np.ndarray:
    """Features (float64) under the current adapter, batch by batch."""
    model = model.to(device).eval()
    out = []
    for b in range(0, len(inputs), batch_size):
        with autocast_bf16(device, amp):
            out.append(forward_features(model, inputs[b : b + batch_size], device).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


# --- merge policies ------------------------------------------------------------------------

class AdapterMerge(Protocol):
    """Folds one round's client factors into the server's adapter state.

    ``replies`` lists which factors a client sends (``"AB"`` or ``"B"``); ``init``
    returns the state before any merge; ``client_start`` the factors a client starts a
    task from; ``merge`` must not modify ``current`` (a rejected round keeps it).
    """

    replies: str

    def init(self, shapes: Mapping[str, tuple[int, int]], settings: AdapterSettings) -> dict[str, np.ndarray]: ...

    def client_start(self, state: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, int]],
                     settings: AdapterSettings, client: int, round: int) -> dict[str, np.ndarray]: ...

    def merge(self, current: Mapping[str, np.ndarray], updates: list[Mapping[str, np.ndarray]],
              weights: list[float], settings: AdapterSettings) -> dict[str, np.ndarray]: ...


ADAPTER_POLICIES: dict[str, Callable[[], AdapterMerge]] = {}


register = registrar(ADAPTER_POLICIES)


def make_adapter_policy(name: str) -> AdapterMerge:
    return create(ADAPTER_POLICIES, name, "merge.adapters")


def _normalised(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w <= 0).any():
        raise ValueError("merge weights must be positive")
    return w / w.sum()


def _weighted_mean(current, updates, weights) -> dict[str, np.ndarray]:
    """Each array of ``current``'s keys averaged over ``updates`` (in float64, sent as float32)."""
    w = _normalised(weights)
    return {k: sum(wi * np.asarray(u[k], np.float64) for wi, u in zip(w, updates)).astype(np.float32) for k in current}


def _shared_start(shapes, settings) -> dict[str, np.ndarray]:
    """A from the shared seed, B zero: every client and the server agree without a message."""
    state = {}
    for i, (n, (out, fan_in)) in enumerate(shapes.items()):
        state[f"{n}.A"] = initial_a(settings.seed, i, (settings.rank, fan_in))
        state[f"{n}.B"] = np.zeros((out, settings.rank), np.float32)
    return state


@register("none")
class LocalOnly:
    """No merge: the server keeps nothing, a client its own adapter (``client_start``
    gets the client's last factors as ``state``)."""

    replies = ""

    def init(self, shapes, settings):
        return {}

    def client_start(self, state, shapes, settings, client, round):
        return dict(state) if state else _shared_start(shapes, settings)

    def merge(self, current, updates, weights, settings):
        return dict(current)


@register("fedavg")
class FedAvgFactors:
    """A and B averaged separately (FedIT, Zhang et al. 2024): the common, inexact baseline."""

    replies = "AB"

    def init(self, shapes, settings):
        return _shared_start(shapes, settings)

    def client_start(self, state, shapes, settings, client, round):
        return dict(state)

    def merge(self, current, updates, weights, settings):
        return _weighted_mean(current, updates, weights)


@register("ffa")
class FrozenA:
    """FFA-LoRA (Sun et al., 2024): A fixed at the shared seed, B averaged. The merged
    update ``s mean(B_i) A`` is exactly the clients' average update."""

    replies = "B"

    def init(self, shapes, settings):
        return {k: v for k, v in _shared_start(shapes, settings).items() if k.endswith(".B")}

    def client_start(self, state, shapes, settings, client, round):
        start = _shared_start(shapes, settings)
        start.update(state)
        return start

    def merge(self, current, updates, weights, settings):
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

    def init(self, shapes, settings):
        return {f"{n}.{p}": np.zeros((out, 0) if p == "U" else (0, fan_in))
                for n, (out, fan_in) in shapes.items() for p in ("U", "V")}

    def client_start(self, state, shapes, settings, client, round):
        start = dict(state)
        for i, (n, (out, fan_in)) in enumerate(shapes.items()):
            start[f"{n}.A"] = initial_a(settings.seed, i, (settings.rank, fan_in), client + 1, round)
            start[f"{n}.B"] = np.zeros((out, settings.rank), np.float32)
        return start

    def merge(self, current, updates, weights, settings):
        w = _normalised(weights)
        merged = {}
        for key in current:
            if not key.endswith(".U"):
                continue
            n = key[:-2]
            u = np.concatenate([current[f"{n}.U"]] + [settings.scale * wi * np.asarray(up[f"{n}.B"], np.float64)
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


def global_updates(policy: str, state: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, int]],
                   settings: AdapterSettings) -> dict[str, np.ndarray]:
    """Each layer's global weight update (out, fan_in), float64, under ``policy``'s state
    (``none``: zero, the server holds no adapter)."""
    out = {}
    full = {} if policy == "none" else make_adapter_policy(policy).client_start(state, shapes, settings, 0, 0)
    for n, shape in shapes.items():
        if policy == "stack":  # a client's fresh B is zero: the update is the folded U V
            out[n] = np.asarray(state[f"{n}.U"], np.float64) @ np.asarray(state[f"{n}.V"], np.float64)
        elif full:
            out[n] = settings.scale * np.asarray(full[f"{n}.B"], np.float64) @ np.asarray(full[f"{n}.A"], np.float64)
        else:
            out[n] = np.zeros(shape)
    return out


def reply_factors(adapted: Adapted, policy: str) -> dict[str, np.ndarray]:
    """The factors a client sends under ``policy`` (only adapter weights, never the backbone)."""
    keep = make_adapter_policy(policy).replies
    return {k: v for k, v in adapted.factors().items() if k[-1] in keep}


# --- staleness: semantic drift compensation ------------------------------------------------

def drift_sums(old: np.ndarray, new: np.ndarray, prototypes: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """SDC (Yu et al., 2020) as additive sums: for each old prototype ``p_k``, the
    Gaussian-weighted sum of the drifts ``new_i - old_i`` of current samples and the sum
    of the weights, ``w_ik = exp(-|old_i - p_k|^2 / (2 sigma^2))``. Clients' sums add;
    the drift estimate is their ratio (:func:`drift_from_sums`)."""
    d2 = ((old[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
    # no per-prototype rescaling (it would differ between clients and break the sums'
    # additivity): sigma must be on the features' scale
    w = np.exp(-d2 / (2 * sigma**2))
    return w.T @ (new - old), w.sum(0)


def drift_from_sums(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Drift of each prototype; zero where no current sample is near it."""
    out = np.zeros_like(sums)
    ok = weights > 1e-300
    out[ok] = sums[ok] / weights[ok, None]
    return out


def compensate(stats, drift: np.ndarray):
    """``stats`` with every class's features moved by its drift row (``ids`` order).

    Sums and the second moment move exactly as if each sample had moved by its
    class's drift; random-feature sums cannot be moved that way (a ValueError).
    """
    if "rf_sums" in stats.extra:
        raise ValueError("drift compensation cannot move random-feature statistics (ridge head)")
    sums = stats.sums + stats.counts[:, None] * drift
    shared = dict(stats.shared)
    if "second_moment" in shared:
        cross = stats.sums.T @ drift
        shared["second_moment"] = shared["second_moment"] + cross + cross.T + (stats.counts[:, None] * drift).T @ drift
    return stats.replace(sums=sums, shared=shared)


# --- one client task and the server's adapter state (the apps and the bench call these) -----

def adapter_settings(scenario) -> AdapterSettings:
    """The scenario's ``adapters`` section and ``merge.adapters`` as flat settings."""
    a = scenario.adapters
    return AdapterSettings(schedule=a.schedule, merge=scenario.merge.adapters, rank=a.rank, alpha=a.alpha,
                           targets=",".join(a.targets or []), lr=a.lr, lr_later=a.lr_later, epochs=a.epochs,
                           batch_size=a.batch_size, loss=a.loss, temperature=a.temperature, seed=scenario.seed,
                           staleness=a.staleness, drift_sigma=a.drift_sigma, amp=a.mixed_precision,
                           rounds=a.rounds)


@dataclass
class TaskResult:
    """What a client's task under adapters gives: statistics (under its adapter after
    training), the factors it sends (empty: it did not train, or policy ``none``), its
    own factors to keep (policy ``none``), and drift sums (``compensate``) or None."""

    stats: object
    factors: dict
    local: dict
    drift: tuple[np.ndarray, np.ndarray] | None
    loss: float
    seconds: float


def client_task(adapted: Adapted, start: Mapping[str, np.ndarray], inputs: np.ndarray, labels: np.ndarray,
                task_number: int, device: torch.device, spec=None, prototypes: np.ndarray | None = None) -> TaskResult:
    """One task on a client: load the adapter it starts from, train it if the schedule
    says so, then summarise the task's samples under the adapter it ends with.

    ``prototypes`` (the server's class means, ``compensate`` only) are what the drift
    sums are measured against: features of the task's samples before and after training.
    """
    import time

    from fedrecon.stats import ClassStats

    s = adapted.settings
    begin = time.perf_counter()
    adapted.load(start)
    # with adapter rounds the adapter was trained and merged before this message: the
    # task is only summarised, under the merged adapter it starts from
    lr = s.lr_for(task_number) if s.rounds == 0 else 0.0
    measure = lr > 0 and s.staleness == "compensate" and prototypes is not None and len(prototypes) > 0
    before = embed_adapted(adapted.model, inputs, device, s.amp) if measure else None
    loss = float("nan")
    if lr > 0:
        loss = train_adapter(adapted, inputs, labels, lr, device, factors=make_adapter_policy(s.merge).replies or "AB")["loss"]
    feats = embed_adapted(adapted.model, inputs, device, s.amp)
    stats = ClassStats.from_features(labels, feats, spec)
    factors = reply_factors(adapted, s.merge) if lr > 0 else {}
    local = adapted.factors() if s.merge == "none" else {}
    drift = drift_sums(before, feats, prototypes, s.drift_sigma) if measure else None
    return TaskResult(stats, factors, local, drift, loss, time.perf_counter() - begin)


def adapt_step(adapted: Adapted, start: Mapping[str, np.ndarray], inputs: np.ndarray, labels: np.ndarray,
               task_number: int, device: torch.device, round: int, step: int) -> tuple[dict[str, np.ndarray], float]:
    """One step of the adapter rounds (``rounds`` > 0): from the merged adapter
    ``start``, train ``epochs`` on the task's samples if the schedule says so.

    Returns the factors to send (empty: the schedule does not train this task) and
    the last epoch's mean loss.
    """
    s = adapted.settings
    lr = s.lr_for(task_number)
    if lr <= 0:
        return {}, float("nan")
    adapted.load(start)
    loss = train_adapter(adapted, inputs, labels, lr, device, factors=make_adapter_policy(s.merge).replies,
                         stream=(round, step))["loss"]
    return reply_factors(adapted, s.merge), loss


class AdapterServer:
    """The server's adapter state under a merge policy, and the staleness policy.

    ``version`` counts the merges that changed the global adapter: statistics merged
    before a change were computed under an older adapter (stale under ``keep``).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], settings: AdapterSettings):
        self.shapes, self.settings = dict(shapes), settings
        self.policy = make_adapter_policy(settings.merge)
        self.state = self.policy.init(self.shapes, settings)
        self.version = 0

    def start_for(self, client: int, round: int, local: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Factors client ``client`` starts a task of ``round`` from (``none``: its own)."""
        base = (local or {}) if self.settings.merge == "none" else self.state
        return self.policy.client_start(base, self.shapes, self.settings, client, round)

    def merge(self, factors: list[Mapping[str, np.ndarray]], weights: list[float]) -> bool:
        """Fold a round's (already validated) factors in; True if the global adapter changed."""
        if not factors or not self.policy.replies:
            return False
        self.state = self.policy.merge(self.state, factors, weights, self.settings)
        self.version += 1
        return True

    def refresh(self, stats, drifts: list[tuple[np.ndarray, np.ndarray]]):
        """Old statistics after a change of the adapter: as they are (``keep``) or moved
        by the drift the round's clients measured (``compensate``)."""
        if self.settings.staleness != "compensate" or not drifts or not len(stats):
            return stats
        sums = sum(d[0] for d in drifts)
        weights = sum(d[1] for d in drifts)
        return compensate(stats, drift_from_sums(sums, weights))

    def payload(self) -> dict[str, np.ndarray]:
        """The global state as it travels down (factors only, never the backbone)."""
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.state.items()}
