"""Three-stage CIFAR ResNets (He et al., CVPR 2016, section 4.2): widths 16/32/64, depth 6n+2.

Two shortcut styles, as in the references:

* ``conv``: open_lth's 1x1-conv + BN projection at each stage transition (``cifar_resnet20``, used by
  GraNet and DPaI); the projections are prunable weights.
* ``pad``: the paper's option A, parameter free: subsample by 2 and zero-pad the new channels
  (``resnet20s`` ... ``resnet56s``, BiP's models, from akamaster/pytorch_resnet_cifar10).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import init as winit
from .zoo import MODELS


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` with ``(out - in) / 2`` zero channels on each side."""

    structure_kind = "pad_shortcut"  # how prunekit.structure.graph recognises it (it cannot import the zoo)

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.pad = (planes - in_planes) // 2
        self.extra = planes - in_planes - self.pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.extra))


class Block(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "conv":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                self.shortcut = PadShortcut(in_planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv3x3(16)-BN-ReLU, three stages of ``n`` blocks (16, 32, 64 filters), global average pool, fc."""

    def __init__(self, n: int, num_classes: int, in_channels: int, shortcut: str, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        for stage, w in enumerate((width, 2 * width, 4 * width), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(Block(planes, w, stride, shortcut))
                planes = w
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=(2, 3)))


_INITS = ("granet", "dpai")


@MODELS.register(
    "cifar_resnet20", family="resnet", input_shape=(3, 32, 32), num_classes=10,
    paper="He et al., Deep Residual Learning, CVPR 2016; as used by GraNet (NeurIPS 2021) and DPaI (ICLR 2025)",
    source="Shiweiliuiiiiiii/GraNet CIFAR/models/cifar_resnet.py (open_lth cifar_resnet_20); "
    "= QuanNguyen-Tri/DPaI models.py ResNet20",
    init="kaiming-normal fan-in on conv and linear weights; fc bias PyTorch default (init='granet', open_lth) "
    "or zero (init='dpai')",
)
def cifar_resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                   init: str = "granet") -> nn.Module:
    """open_lth's ResNet-20 with 1x1-conv + BN projection shortcuts; returns logits (GraNet's copy returns
    log-probabilities). 22 prunable tensors, 270,896 conv/linear weights at 10 classes."""
    if init not in _INITS:
        raise ConfigError(f"cifar_resnet20: init={init!r} is not allowed; allowed: {', '.join(_INITS)}")
    model = CifarResNet(3, num_classes, in_channels, shortcut="conv")
    winit.kaiming_normal_fan_in(model, zero_bias=init == "dpai")
    return model


def _register_bip(depth: int):
    n = (depth - 2) // 6

    @MODELS.register(
        f"resnet{depth}s", family="resnet", input_shape=(3, 32, 32), num_classes=10,
        paper="He et al., Deep Residual Learning, CVPR 2016 (option A); as used by BiP (Zhang et al., "
        "NeurIPS 2022)",
        source=f"OPTML-Group/BiP models/resnets.py (resnet{depth}s)",
        init="kaiming-normal fan-in on conv and linear weights, fc bias PyTorch default (_weights_init)",
    )
    def build(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
        model = CifarResNet(n, num_classes, in_channels, shortcut="pad")
        winit.kaiming_normal_fan_in(model, zero_bias=False)
        return model

    build.__doc__ = f"BiP's ResNet-{depth} for CIFAR with parameter-free option-A shortcuts ({n} blocks per stage)."
    build.__name__ = f"resnet{depth}s"
    return build


resnet20s = _register_bip(20)
resnet32s = _register_bip(32)
resnet44s = _register_bip(44)
resnet56s = _register_bip(56)
