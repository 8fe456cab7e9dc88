"""Building a backbone, its weights as arrays, and embedding samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedrecon.backbones.registry import backbone_entry
from fedrecon.paths import missing_checkpoint
from fedrecon.plugins import PluginError, load_object


def build_backbone(name: str) -> nn.Module:
    """Backbone ``name`` (a built-in or ``package.module:attribute``) in eval mode, with
    the weights its builder gives it."""
    model = load_object(backbone_entry(name).build)()
    if not isinstance(model, nn.Module):
        raise PluginError(f"{name} returned a {type(model).__name__}, not a torch nn.Module")
    return model.eval()


def load_backbone(name: str, checkpoint: str | Path | None) -> nn.Module:
    """Build backbone ``name`` in eval mode, with weights from ``checkpoint`` if given."""
    model = build_backbone(name)
    if checkpoint is not None:
        model.load_state_dict(read_checkpoint(checkpoint))
    return model.eval()


def read_checkpoint(checkpoint: str | Path) -> dict:
    """The state dict a checkpoint file holds (a bare one, or under ``state_dict``)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint(path))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file that is no checkpoint
        raise RuntimeError(f"{path}: not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    state = blob["state_dict"] if isinstance(blob, dict) and "state_dict" in blob else blob
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


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
