"""Models for `--model tests.rbn.zoo_models:<factory>`-style intake tests (a user's own module).

``all_positions``: every BatchNorm2d position real networks have — after a plain conv (stem), after a
depthwise conv, inside a squeeze-excitation block (on a 1x1 map), before a residual add, and one that
follows no conv (after the add, so nothing can fold into it). Small, so a test exports it in seconds.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SqueezeExcite(nn.Module):
    """pool -> conv1x1 -> BN (1x1 map: the instance mean is the value itself) -> ReLU -> conv1x1 -> sigmoid gate."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1, bias=True)
        self.bn = nn.BatchNorm2d(squeezed)
        self.expand = nn.Conv2d(squeezed, channels, 1, bias=True)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.expand(F.relu(self.bn(self.reduce(s))))
        return x * torch.sigmoid(s)


class InvertedResidual(nn.Module):
    """expand conv -> BN -> ReLU6 -> depthwise conv -> BN -> ReLU6 -> SE -> project conv -> BN, + input."""

    def __init__(self, channels: int, expand: int = 2) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand_conv = nn.Conv2d(channels, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, max(1, hidden // 4))
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu6(self.expand_bn(self.expand_conv(x)))
        y = F.relu6(self.depthwise_bn(self.depthwise(y)))
        y = self.project_bn(self.project(self.se(y)))  # the BN before the residual add
        return x + y


class AllPositions(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.block = InvertedResidual(width)
        self.post_add_bn = nn.BatchNorm2d(width)  # follows the residual add, not a conv: stays a separate op
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.post_add_bn(self.block(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1))


def all_positions() -> nn.Module:
    torch.manual_seed(0)
    return AllPositions()


def not_a_module() -> str:
    return "a string"


def three_classes() -> nn.Module:
    """all_positions with a 3-class head: the generated ImageFolders' red, green and blue."""
    torch.manual_seed(0)
    return AllPositions(num_classes=3)
