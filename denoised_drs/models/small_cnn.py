"""A small, fast convolutional network for 28x28 grey images (the Fashion-MNIST default).

About 262k parameters (about 1 MB in float32) and about 4M multiply-adds per image,
so a full Fashion-MNIST epoch trains in well under a minute on two idle CPU cores. Any input
whose height and width are multiples of 4 works; the linear head is sized for the
``input_size`` given at construction.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Four 3x3 convolutions (16, 32, 64, 64 channels; two stride-2) and a 64-unit MLP head."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, input_size: tuple[int, int] = (28, 28)
    ) -> None:
        super().__init__()
        height, width = input_size
        if height % 4 or width % 4:
            raise ValueError(f"SmallCNN needs height and width divisible by 4, got {input_size}")
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 16, 1),
            *_conv_bn(16, 32, 2),
            *_conv_bn(32, 64, 2),
            *_conv_bn(64, 64, 1),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
