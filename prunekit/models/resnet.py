"""Four-stage ResNets (He et al., CVPR 2016): CIFAR-style (3x3 stem, no max-pool) and ImageNet-style
(7x7 stride-2 stem + max-pool), basic or bottleneck blocks (stride on the 3x3 conv, "v1.5").

Projection shortcuts are ``shortcut.0`` (1x1 conv) + ``shortcut.1`` (BN) inside each block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import init as winit
from .zoo import MODELS, check_size


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = _shortcut(in_planes, 4 * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """stem - layer1..layer4 (64/128/256/512 planes) - global average pool - fc."""

    def __init__(self, block: type, num_blocks: list[int], num_classes: int, in_channels: int,
                 stem: str = "cifar", stem_stride: int = 1, fc_bias: bool = True):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        planes = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(planes, width, 2 if i > 1 and j == 0 else 1))
                planes = width * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(planes, num_classes, bias=fc_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(out.mean(dim=(2, 3)))


_GRANET = "Liu et al., Sparse Training via Boosting Pruning Plasticity with Neuroregeneration, NeurIPS 2021"
_DPAI = "Xiang et al., DPaI: Differentiable Pruning at Initialization with Node-Path Balance Principle, ICLR 2025"
_CIFAR_INITS = {
    "granet": "PyTorch default (kaiming-uniform a=sqrt 5), as GraNet's resnet_cifar100.py",
    "dpai": "kaiming-uniform a=0 (fan-in, gain sqrt 2) on conv and linear weights, as DPaI's ResNet",
}
_PLANS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}


def _register_cifar(depth: int, default_init: str):
    block, plan = _PLANS[depth]
    why = {"dpai": "DPaI's paper model", "granet": "GraNet's released CIFAR scripts"}[default_init]

    @MODELS.register(
        f"cifar_resnet{depth}", family="resnet", input_shape=(3, 32, 32), num_classes=10,
        paper=f"He et al., CVPR 2016; CIFAR variant as used by GraNet ({_GRANET}) and DPaI ({_DPAI})",
        source=f"Shiweiliuiiiiiii/GraNet CIFAR/sparselearning/resnet_cifar100.py (ResNet{depth}); "
        f"QuanNguyen-Tri/DPaI models.py (ResNet{depth})",
        init=f"init='{default_init}' by default ({why}): " + "; ".join(f"'{k}': {v}" for k, v in _CIFAR_INITS.items()),
    )
    def build(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
              init: str = default_init) -> nn.Module:
        if init not in _CIFAR_INITS:
            raise ConfigError(f"cifar_resnet{depth}: init={init!r} is not allowed; allowed: {', '.join(_CIFAR_INITS)}")
        model = ResNet(block, plan, num_classes, in_channels, fc_bias=False)
        if init == "dpai":
            winit.kaiming_uniform_fan_in(model)
        return model

    build.__doc__ = (f"CIFAR ResNet-{depth}: 3x3 stem, no max-pool, bias-free classifier, logits "
                     "(GraNet's copy returns log-probabilities); global pooling, so 64x64 Tiny-ImageNet works too.")
    build.__name__ = f"cifar_resnet{depth}"
    return build


cifar_resnet18 = _register_cifar(18, "dpai")
cifar_resnet34 = _register_cifar(34, "granet")
cifar_resnet50 = _register_cifar(50, "granet")


@MODELS.register(
    "resnet18_lap", family="resnet", input_shape=(3, 32, 32), num_classes=10,
    paper="Park et al., Lookahead: A Far-sighted Alternative of Magnitude-based Pruning, ICLR 2020",
    source="alinlab/lookahead_pruning network/masked_resnet.py (MaskedResNet18; input_size=64 follows "
    "network/masked_resnet_64.py)",
    init="xavier-normal weights, zero biases for masked convs and fc; 1x1 shortcuts PyTorch default",
)
def resnet18_lap(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """LAP's CIFAR ResNet-18 (fc with bias); at 64x64 the stem conv has stride 2 as in LAP's _64 variant."""
    check_size("resnet18_lap", input_size, "32 (CIFAR) or 64 (Tiny-ImageNet)", input_size in (32, 64))
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, stem_stride=input_size // 32)
    winit.lap_xavier(model)
    return model


@MODELS.register(
    "resnet50_lap", family="resnet", input_shape=(3, 64, 64), num_classes=200,
    paper="Park et al., Lookahead: A Far-sighted Alternative of Magnitude-based Pruning, ICLR 2020",
    source="alinlab/lookahead_pruning network/masked_resnet_64.py (MaskedResNet50_64, 'resnet50_64')",
    init="xavier-normal weights, zero biases for masked convs and fc; 1x1 shortcuts PyTorch default",
)
def resnet50_lap(num_classes: int = 200, in_channels: int = 3, input_size: int = 64) -> nn.Module:
    """LAP's Tiny-ImageNet ResNet-50: bottleneck blocks, a 3x3 stem with stride 2 at 64x64 (stride 1 at
    32x32), fc with bias; its 4x4 final average pool is the global pool at 64x64."""
    check_size("resnet50_lap", input_size, "64 (Tiny-ImageNet) or 32 (CIFAR)", input_size in (32, 64))
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, stem_stride=input_size // 32)
    winit.lap_xavier(model)
    return model


def _register_imagenet(depth: int):
    block, plan = _PLANS[depth]

    @MODELS.register(
        f"imagenet_resnet{depth}", family="resnet", input_shape=(3, 224, 224), num_classes=1000,
        paper="He et al., Deep Residual Learning, CVPR 2016; as used by BiP (Zhang et al., NeurIPS 2022)",
        source=f"OPTML-Group/BiP models/resnet.py (ResNet{depth}, = torchvision resnet{depth})",
        init="conv kaiming-normal fan-out; BN 1/0; fc PyTorch default (torchvision)",
    )
    def build(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224) -> nn.Module:
        check_size(f"imagenet_resnet{depth}", input_size, "an integer >= 32", input_size >= 32)
        model = ResNet(block, plan, num_classes, in_channels, stem="imagenet")
        winit.torchvision_resnet(model)
        return model

    build.__doc__ = f"ImageNet ResNet-{depth}: 7x7/2 stem, 3x3/2 max-pool, torchvision layout (downsample -> shortcut)."
    build.__name__ = f"imagenet_resnet{depth}"
    return build


imagenet_resnet18 = _register_imagenet(18)
imagenet_resnet50 = _register_imagenet(50)
