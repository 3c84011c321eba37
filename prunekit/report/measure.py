"""Parameters and FLOPs, dense and sparsity-aware.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` for one forward pass of one
sample: 2 x multiply-accumulates of every matrix multiplication and convolution (the convention of the
RigL and GraNet papers' FLOP tables); element-wise layers (BN, activations, pooling) are negligible and
not counted. The sparse count scales each masked layer's FLOPs by the density of its weight mask (a
masked weight does no work); a compact model's dense count is what it really costs.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
    """``{"params": all parameters, "nonzero": parameters left after masking}``."""
    total = sum(p.numel() for p in model.parameters())
    pruned = 0
    if masks is not None:
        pruned = sum(int((~m.to(torch.bool)).sum()) for m in masks.values())
    return {"params": total, "nonzero": total - pruned}


@torch.no_grad()
def module_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> dict[str, float]:
    """``{module name: FLOPs of one sample}`` for every module (a parent includes its children; the
    model itself is ``""``), counted in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
    prefix = type(model).__name__
    out: dict[str, float] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == prefix else key[len(prefix) + 1:] if key.startswith(prefix + ".") else key
        out[name] = float(sum(ops.values()))
    return out


def count_flops(model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, torch.Tensor] | None = None,
                device: torch.device | str = "cpu") -> dict[str, float]:
    """``{"flops": dense, "sparse_flops": with masks}`` for one sample of shape ``input_shape``.

    A mask may be a bool tensor or any tensor whose mean is the layer's density.
    """
    per_module = module_flops(model, input_shape, device)
    dense = per_module.get("", 0.0)
    saved = 0.0
    for name, m in (masks or {}).items():
        if name.endswith(".weight") or name == "weight":
            layer = name[: -len(".weight")] if name != "weight" else ""
            saved += per_module.get(layer, 0.0) * (1.0 - float(m.float().mean()))
    return {"flops": dense, "sparse_flops": dense - saved}
