"""LAP's small convolutional networks: LeNet-5 and Conv-6 (Park et al., ICLR 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import init as winit
from .zoo import MODELS, check_size

_LAP_PAPER = "Park et al., Lookahead: A Far-sighted Alternative of Magnitude-based Pruning, ICLR 2020"
_LAP_INIT = "xavier-normal weights, zero biases (LAP MaskedConv2d/MaskedLinear)"


class LeNet5(nn.Module):
    """conv5x5(6) - pool - conv5x5(16) - pool - fc120 - fc84 - fc, ReLU, no padding."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        side = ((input_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@MODELS.register(
    "lenet5", family="lenet", input_shape=(3, 32, 32), num_classes=10, paper=_LAP_PAPER,
    source="alinlab/lookahead_pruning network/masked_lenet.py (MaskedLeNet)", init=_LAP_INIT,
)
def lenet5(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """LAP's LeNet-5 (CIFAR-10: 3x32x32 -> 16x5x5 = 400 features -> 120 -> 84).

    LAP defines it for CIFAR only; on MNIST (``in_channels=1, input_size=28``) the same layers give
    16x4x4 = 256 features into fc1 (the Caffe-style LeNet-5 without first-layer padding)."""
    check_size("lenet5", input_size, "an integer >= 16", input_size >= 16)
    model = LeNet5(num_classes, in_channels, input_size)
    winit.lap_xavier(model)
    return model


class Conv6(nn.Module):
    """[conv3x3(64) x2, pool, conv3x3(128) x2, pool, conv3x3(256) x2, pool] - fc256 - fc256 - fc."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int):
        super().__init__()
        widths = [in_channels, 64, 64, 128, 128, 256, 256]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, padding=1) for a, b in zip(widths[:-1], widths[1:])
        )
        side = input_size // 8
        self.fc1 = nn.Linear(256 * side * side, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@MODELS.register(
    "conv6", family="convnet", input_shape=(3, 32, 32), num_classes=10, paper=_LAP_PAPER,
    source="alinlab/lookahead_pruning network/masked_conv6.py (MaskedConv6; Conv-6 of Frankle & Carbin, "
    "ICLR 2019)",
    init=_LAP_INIT,
)
def conv6(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """LAP's Conv-6 for CIFAR-10 (2,261,184 conv + linear weights at 10 classes)."""
    check_size("conv6", input_size, "an integer >= 8", input_size >= 8)
    model = Conv6(num_classes, in_channels, input_size)
    winit.lap_xavier(model)
    return model
