"""The example's own network: a small residual CNN (conv-BN-ReLU stem, one residual block,
a depthwise conv, global average pooling, a linear classifier). Nothing in lilnetx knows it:
the search space names it as a factory, and its `.lnx` files carry its graph, so they decode
without this file."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, channels: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.block = Block(channels)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        x = torch.relu(self.depthwise(nn.functional.max_pool2d(x, 2)))
        return self.head(torch.flatten(self.pool(x), 1))


def build(in_channels: int, num_classes: int, channels: int = 8) -> nn.Module:
    """The factory the search space names (``tinynet:build``): lilnetx passes the data's
    ``in_channels`` and ``num_classes``; ``channels`` comes from the space's ``args``."""
    return TinyNet(in_channels, num_classes, channels)
