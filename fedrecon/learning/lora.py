"""LoRA on a frozen backbone: the parametrization, the layers it goes on, its factors.

The weight is rewritten by a :mod:`torch.nn.utils.parametrize` parametrization, so any
module with a ``weight`` (``Linear``, ``Conv2d``, EfficientNet's ``SameConv``) is adapted
without touching its ``forward``. The identities the merges rely on are in
:mod:`fedrecon.learning.adapter_merges`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from fedrecon.backbones.registry import BackboneEntry, adapter_targets
from fedrecon.scenario.sections import AdaptersConfig


def target_layers(model: nn.Module, default: Callable[[str, nn.Module], bool] | None, targets: list[str] | None = None,
                  backbone: str = "the backbone") -> list[str]:
    """Names of the modules an adapter goes on, in ``named_modules`` order: those whose
    name contains one of ``targets``, else those the backbone's ``default`` picks."""
    if targets:
        names = [n for n, m in model.named_modules()
                 if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.ndim in (2, 4)
                 and any(p in n for p in targets)]
    else:
        if default is None:
            raise ValueError(f"backbone {backbone} has no default adapter layers: name them in adapters.targets")
        names = [n for n, m in model.named_modules() if default(n, m)]
    if not names:
        raise ValueError(f"no layer of {backbone} matches adapters.targets {targets!r}")
    return names


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
        self.enabled = True  # False: the backbone's own weight (the frozen half of features: both)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        delta = self.D + self.scale * (self.B @ self.A)
        return weight + delta.to(weight.dtype).view(self.shape)

    def update(self) -> torch.Tensor:
        """``D + s B A`` (out, fan_in): the layer's weight minus the backbone's."""
        return self.D + self.scale * (self.B @ self.A)


class Adapted:
    """A backbone with LoRA on its target layers; ``model`` is the same module, adapted.

    Under ``adapters.features: both`` a forward hook on ``model`` puts the frozen
    backbone's features before the adapted ones, so every path that embeds (a client's
    summary, the server's and the clients' scoring, the bench) gets the same
    side-by-side features without knowing of them; the adapter's training runs inside
    :meth:`adapted_only`, its loss on the adapted features alone.

    Parameters
    ----------
    model : nn.Module
        The backbone; its own parameters are frozen here (``requires_grad=False``).
    entry : BackboneEntry
        Its registry entry (the default layers to adapt).
    adapters : AdaptersConfig
        The scenario's ``adapters`` section: rank, scale, targets and training.
    """

    def __init__(self, model: nn.Module, entry: BackboneEntry, adapters: AdaptersConfig):
        self.model, self.adapters = model, adapters
        for p in model.parameters():
            p.requires_grad_(False)
        self.names = target_layers(model, adapter_targets(entry, model), adapters.targets, entry.build)
        modules = dict(model.named_modules())
        self.lora: dict[str, LoRA] = {}
        for name in self.names:
            module = modules[name]
            lora = LoRA(tuple(module.weight.shape), adapters.rank, adapters.scale).to(module.weight.device)
            parametrize.register_parametrization(module, "weight", lora)
            self.lora[name] = lora
        self._side = adapters.features == "both"
        if self._side:
            model.register_forward_hook(self._beside_frozen, with_kwargs=True)

    def _beside_frozen(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
        if not self._side:
            return None  # the output as it is
        with self.adapted_only(), self.frozen():
            base = module(*args, **kwargs)
        return torch.cat([base.to(output.dtype), output], dim=1)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Forwards inside see the backbone's own weights (every adapter off)."""
        for m in self.lora.values():
            m.enabled = False
        try:
            yield
        finally:
            for m in self.lora.values():
                m.enabled = True

    @contextmanager
    def adapted_only(self) -> Iterator[None]:
        """Forwards inside give the adapted features alone (``features: both`` off): what
        the adapter's loss is taken on."""
        side, self._side = self._side, False
        try:
            yield
        finally:
            self._side = side

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
