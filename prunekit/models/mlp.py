"""Fully connected networks: LAP's FCN, LeNet-300-100 and a generic MLP.

Every MLP flattens its input, so the same model runs on MNIST (1x28x28), CIFAR (3x32x32) or any
tensor with ``in_features`` elements per sample. ``in_features`` may be given directly or as
``in_channels`` x ``input_size``\\ :sup:`2`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from . import init as winit
from .zoo import MODELS, check_positive_int


class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> num_classes`` with ReLU between linear layers."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


def _in_features(model: str, default: tuple[int, int, int], in_features, in_channels, input_size) -> int:
    if in_channels is None and input_size is None:
        return in_features if in_features is not None else default[0] * default[1] * default[2]
    c = in_channels if in_channels is not None else default[0]
    s = input_size if input_size is not None else default[1]
    if in_features is not None and in_features != c * s * s:
        raise ConfigError(
            f"{model}: in_features={in_features} contradicts in_channels={c} x input_size={s}^2 = {c * s * s}; "
            "allowed: give in_features alone, or in_channels/input_size alone"
        )
    return c * s * s


@MODELS.register(
    "fcn", family="mlp", input_shape=(1, 28, 28), num_classes=10,
    paper="Park et al., Lookahead: A Far-sighted Alternative of Magnitude-based Pruning, ICLR 2020",
    source="alinlab/lookahead_pruning network/masked_mlp.py (MaskedMLP([784, 500, 500, 500, 500, 10]), "
    "hyperparameter.py 'mlp')",
    init="xavier-normal weights, zero biases (LAP MaskedLinear)",
)
def fcn(num_classes: int = 10, in_features: int | None = None, in_channels: int | None = None,
        input_size: int | None = None) -> nn.Module:
    """LAP's FCN for MNIST: 784-500-500-500-500-10 with ReLU (1,147,000 weights at 10 classes)."""
    n = _in_features("fcn", (1, 28, 28), in_features, in_channels, input_size)
    model = MLP([n, 500, 500, 500, 500, num_classes])
    winit.lap_xavier(model)
    return model


@MODELS.register(
    "lenet300_100", family="mlp", input_shape=(1, 28, 28), num_classes=10,
    paper="LeCun et al., Gradient-based learning applied to document recognition, 1998 (as used by SNIP, "
    "Lee et al., ICLR 2019)",
    source="QuanNguyen-Tri/DPaI models.py (LeNet_300_100, from mi-lad/snip)",
    init="PyTorch default (kaiming-uniform a=sqrt 5, uniform biases)",
)
def lenet300_100(num_classes: int = 10, in_features: int | None = None, in_channels: int | None = None,
                 input_size: int | None = None) -> nn.Module:
    """LeNet-300-100: 784-300-100-10 with ReLU and biases (266,200 weights at 10 classes)."""
    n = _in_features("lenet300_100", (1, 28, 28), in_features, in_channels, input_size)
    return MLP([n, 300, 100, num_classes])


@MODELS.register(
    "mlp", family="mlp", input_shape=(1, 8, 8), num_classes=10,
    paper="generic multi-layer perceptron (prunekit demo on scikit-learn's 8x8 digits)",
    source="prunekit",
    init="PyTorch default (kaiming-uniform a=sqrt 5, uniform biases)",
)
def mlp(num_classes: int = 10, in_features: int | None = None, hidden: Sequence[int] = (256, 128),
        in_channels: int | None = None, input_size: int | None = None) -> nn.Module:
    """A generic MLP ``in_features -> *hidden -> num_classes``; defaults fit the 8x8 digits (64 inputs)."""
    n = _in_features("mlp", (1, 8, 8), in_features, in_channels, input_size)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ConfigError(f"mlp: hidden={hidden!r} is not allowed; allowed: a list of positive integers")
    for i, h in enumerate(hidden):
        check_positive_int(f"mlp: hidden[{i}]", h)
    return MLP([n, *hidden, num_classes])
