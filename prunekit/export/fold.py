"""Inference form of a model: BatchNorm folded into the convolution before it.

Eval-mode BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with scaled
weights and a bias (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018, §3.2). Every inference runtime does this (ONNX Runtime's
graph optimizer, ``torch.jit.freeze``); latency comparisons of pruned models use it on every side, so
a compact model is not credited or charged for normalisation layers a deployment would not run.
"""
from __future__ import annotations

import copy
import warnings

from torch import nn
from torch.fx.experimental.optimization import fuse


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv→BatchNorm pair fused (``torch.fx``); outputs
    equal the original's up to float rounding. A model ``torch.fx`` cannot trace is returned as an
    eval-mode copy, unfused, with a warning."""
    model = copy.deepcopy(model).eval()
    try:
        return fuse(model, inplace=True)
    except Exception as e:  # tracing fails on data-dependent control flow: measure it as it is
        warnings.warn(f"BatchNorm not folded ({type(e).__name__}: {e}); timing the model unfused", stacklevel=2)
        return model
