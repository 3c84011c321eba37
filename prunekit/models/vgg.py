"""CIFAR VGG variants of LAP, GraNet, DPaI and BiP (Simonyan & Zisserman, ICLR 2015, adapted to 32x32).

The four references share the conv plans but differ in conv biases, the pooling before the classifier,
the classifier itself and the initialisation; each builder names its reference file.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import init as winit
from .zoo import MODELS, check_size

PLANS: dict[int, list] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}
_PAPERS = {
    "lap": "Park et al., Lookahead: A Far-sighted Alternative of Magnitude-based Pruning, ICLR 2020",
    "granet": "Liu et al., Sparse Training via Boosting Pruning Plasticity with Neuroregeneration, NeurIPS 2021",
    "dpai": "Xiang et al., DPaI: Differentiable Pruning at Initialization with Node-Path Balance Principle, "
    "ICLR 2025",
    "bip": "Zhang et al., Advancing Model Pruning via Bi-level Optimization, NeurIPS 2022",
}


class VGG(nn.Module):
    """``features`` (conv3x3-BN-ReLU blocks and max-pools) -> ``pool`` -> flatten -> ``classifier``."""

    def __init__(self, plan: Sequence, num_classes: int, in_channels: int, conv_bias: bool,
                 pool: nn.Module | None = None, hidden: Sequence[int] = (), flat: int = 512,
                 first_stride: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            stride = first_stride if not layers else 1
            layers += [nn.Conv2d(c, v, 3, stride=stride, padding=1, bias=conv_bias), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
        self.features = nn.Sequential(*layers)
        self.pool = pool if pool is not None else nn.Identity()
        if hidden:
            head: list[nn.Module] = []
            for a, b in zip([flat, *hidden[:-1]], hidden):
                head += [nn.Linear(a, b), nn.ReLU()]
            self.classifier: nn.Module = nn.Sequential(*head, nn.Linear(hidden[-1], num_classes))
        else:
            self.classifier = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _lap(depth: int, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    name = f"vgg{depth}_bn_lap"
    check_size(name, input_size, "32 (CIFAR) or 64 (Tiny-ImageNet)", input_size in (32, 64))
    # LAP's Tiny-ImageNet variant (network/masked_vgg_64.py) strides the first conv instead of pooling.
    model = VGG(PLANS[depth] + ["M"], num_classes, in_channels, conv_bias=True, first_stride=input_size // 32)
    winit.lap_xavier(model)
    return model


def _register_lap(depth: int):
    @MODELS.register(
        f"vgg{depth}_bn_lap", family="vgg", input_shape=(3, 32, 32), num_classes=10, paper=_PAPERS["lap"],
        source=f"alinlab/lookahead_pruning network/masked_vgg.py (MaskedVGG{depth}, use_bn=True; "
        "input_size=64 follows network/masked_vgg_64.py)",
        init="xavier-normal weights, zero biases (LAP MaskedConv2d/MaskedLinear)",
    )
    def build(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
        return _lap(depth, num_classes, in_channels, input_size)

    build.__doc__ = (f"LAP's VGG-{depth}-BN: conv biases, BN, 5 max-pools, Linear(512, C); "
                     "first conv strided at input_size=64.")
    build.__name__ = f"vgg{depth}_bn_lap"
    return build


vgg11_bn_lap = _register_lap(11)
vgg16_bn_lap = _register_lap(16)
vgg19_bn_lap = _register_lap(19)


@MODELS.register(
    "vgg19_bn_granet", family="vgg", input_shape=(3, 32, 32), num_classes=10, paper=_PAPERS["granet"],
    source="Shiweiliuiiiiiii/GraNet CIFAR/models/vgg.py (VGG(depth=19, batchnorm=True))",
    init="conv kaiming-normal fan-out, linear N(0, 0.01), zero biases (CIFAR/models/init_utils.py)",
)
def vgg19_bn_granet(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """GraNet's VGG-19-BN: bias-free convs, 4 max-pools, AvgPool2d(2) (AvgPool2d(4) at 64x64), Linear(512, C)."""
    check_size("vgg19_bn_granet", input_size, "a multiple of 16", input_size % 16 == 0)
    model = VGG(PLANS[19], num_classes, in_channels, conv_bias=False, pool=nn.AvgPool2d(input_size // 16))
    winit.vgg_fan_out(model)
    return model


@MODELS.register(
    "vgg19_bn_dpai", family="vgg", input_shape=(3, 32, 32), num_classes=10, paper=_PAPERS["dpai"],
    source="QuanNguyen-Tri/DPaI models.py (vgg19_bn: VGG with ConvBNModule)",
    init="kaiming-normal fan-in on conv and linear weights, zero biases (VGG._initialize_weights)",
)
def vgg19_bn_dpai(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """DPaI's VGG-19-BN: convs with biases, 4 max-pools, AvgPool2d(2), Linear(512, C)."""
    check_size("vgg19_bn_dpai", input_size, "a multiple of 16", input_size % 16 == 0)
    model = VGG(PLANS[19], num_classes, in_channels, conv_bias=True, pool=nn.AvgPool2d(input_size // 16))
    winit.kaiming_normal_fan_in(model, zero_bias=True)
    return model


@MODELS.register(
    "vgg16_bn", family="vgg", input_shape=(3, 32, 32), num_classes=10, paper=_PAPERS["bip"],
    source="OPTML-Group/BiP models/vgg_cifar.py (vgg16_bn)",
    init="conv kaiming-normal fan-out, linear N(0, 0.01), zero biases (vgg_cifar.initialize_weights, whose "
    "reference version raises NameError on the undefined 'init_type'; this is its evident intent)",
)
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """BiP's VGG-16-BN: bias-free convs, 4 max-pools, AdaptiveAvgPool2d(2), 2048-256-256-C classifier."""
    check_size("vgg16_bn", input_size, "an integer >= 16", input_size >= 16)
    model = VGG(PLANS[16], num_classes, in_channels, conv_bias=False, pool=nn.AdaptiveAvgPool2d((2, 2)),
                hidden=(256, 256), flat=512 * 2 * 2)
    winit.vgg_fan_out(model)
    return model
