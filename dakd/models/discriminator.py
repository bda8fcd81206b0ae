"""Fully convolutional output-space discriminator of AdaptSegNet (Tsai et al., CVPR 2018).

Five 4x4 convs with stride 2 and padding 1, channels ``C -> ndf -> 2 ndf -> 4 ndf -> 8 ndf -> 1``,
LeakyReLU(0.2) after each but the last. Input: softmax class maps ``[B, C, H, W]`` (at image
resolution); output: source/target logits ``[B, 1, H/32, W/32]`` (each conv halves the size,
rounding down). Convolutions keep PyTorch's default initialisation, as in AdaptSegNet.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Discriminator"]


class Discriminator(nn.Module):
    """AdaptSegNet discriminator with ``num_classes`` input channels and base width ``ndf``."""

    def __init__(self, num_classes: int = 19, ndf: int = 64, negative_slope: float = 0.2) -> None:
        super().__init__()
        channels = (num_classes, ndf, ndf * 2, ndf * 4, ndf * 8, 1)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(channels) - 2:
                layers.append(nn.LeakyReLU(negative_slope, inplace=True))
        self.layers = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
