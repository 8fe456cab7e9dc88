"""The conv4 ProtoNet embedding and raw pixels, the no-learning floor."""

from __future__ import annotations

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


def adapter_targets(name: str, module: nn.Module) -> bool:
    """Adapters go on every conv."""
    return isinstance(module, nn.Conv2d)


class Pixels(nn.Module):
    """Raw pixels as features: the no-learning floor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)
