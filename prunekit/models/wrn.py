"""Wide ResNet (Zagoruyko & Komodakis, BMVC 2016) as LAP uses it: WRN-16-8 on Tiny-ImageNet."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import init as winit
from .zoo import MODELS, check_size


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3(stride), + shortcut(x).

    As in LAP's copy of meliketoy/wide-resnet.pytorch: convs have biases, the stride sits on the second
    conv and the projection shortcut (1x1 conv with bias) takes the block input before activation."""

    def __init__(self, in_planes: int, planes: int, dropout: float, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """conv3x3(16) - three stages of (depth-4)/6 wide blocks (16k, 32k, 64k) - BN-ReLU - pool - linear."""

    def __init__(self, depth: int, k: int, num_classes: int, in_channels: int, dropout: float, stem_stride: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * k, 32 * k, 64 * k)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=stem_stride, padding=1, bias=True)
        planes = 16
        for i, w in enumerate(widths, start=1):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(planes, w, dropout, 2 if i > 1 and j == 0 else 1))
                planes = w
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        # momentum=0.9 is the reference's (a TF-style value; in PyTorch it makes the running statistics
        # follow the last batches closely). Kept for faithfulness: it changes eval-mode accuracy.
        self.bn1 = nn.BatchNorm2d(planes, momentum=0.9)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.linear(out.mean(dim=(2, 3)))


@MODELS.register(
    "wrn16_8", family="wrn", input_shape=(3, 64, 64), num_classes=200,
    paper="Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016; as used by LAP (Park et al., ICLR 2020)",
    source="alinlab/lookahead_pruning network/masked_wrn_64.py (MaskedWideResNet_64(16, 8), 'wrn-16-8_64')",
    init="xavier-normal weights, zero biases for masked convs and linear; 1x1 shortcuts PyTorch default "
    "(the reference's conv_init is defined but never applied)",
)
def wrn16_8(num_classes: int = 200, in_channels: int = 3, input_size: int = 64, dropout: float = 0.3) -> nn.Module:
    """LAP's WRN-16-8 for Tiny-ImageNet: stride-2 stem at 64x64 (stride 1 at 32x32, the CIFAR WRN),
    dropout 0.3, final BN momentum 0.9, global average pool (= the reference's avg_pool2d(8))."""
    check_size("wrn16_8", input_size, "32 (CIFAR) or 64 (Tiny-ImageNet)", input_size in (32, 64))
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"wrn16_8: dropout={dropout!r} is not allowed; allowed: a number in [0, 1)")
    model = WideResNet(16, 8, num_classes, in_channels, float(dropout), stem_stride=input_size // 32)
    winit.lap_xavier(model)
    return model
