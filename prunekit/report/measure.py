"""Parameters and FLOPs, dense and sparsity-aware.

FLOPs are counted for one forward pass of one sample as 2 × multiply-accumulates of every conv and
linear layer (the convention of the RigL and GraNet papers' FLOP tables); the sparse count scales each
layer by the density of its mask (a masked weight does no work). Other layers (BN, activations,
pooling) are negligible and not counted.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..sparsity.targets import CONV_TYPES


def count_params(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
    """``{"params": all parameters, "nonzero": parameters left after masking}``."""
    total = sum(p.numel() for p in model.parameters())
    pruned = 0
    if masks is not None:
        pruned = sum(int((~m).sum()) for m in masks.values())
    return {"params": total, "nonzero": total - pruned}


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, torch.Tensor] | None = None,
                device: torch.device | str = "cpu") -> dict[str, float]:
    """``{"flops": dense, "sparse_flops": with masks}`` for one sample of shape ``input_shape``."""
    density = {}
    if masks is not None:
        density = {name[: -len(".weight")]: float(m.float().mean()) for name, m in masks.items() if name.endswith(".weight")}
    totals = {"flops": 0.0, "sparse_flops": 0.0}
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            per_output = module.weight[0].numel()  # conv: in/groups*k*k; linear: in_features
            macs = output.numel() / output.shape[0] * per_output
            totals["flops"] += 2.0 * macs
            totals["sparse_flops"] += 2.0 * macs * density.get(name, 1.0)
        return fn

    for name, module in model.named_modules():
        if isinstance(module, CONV_TYPES + (nn.Linear,)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return totals
