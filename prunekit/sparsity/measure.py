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
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..modelio import hf_conv1d_type
from .targets import CONV_TYPES


def count_params(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
    """``{"params": all parameters, "nonzero": parameters left after masking}``."""
    total = sum(p.numel() for p in model.parameters())
    pruned = 0
    if masks is not None:
        pruned = sum(int((~m.to(torch.bool)).sum()) for m in masks.values())
    return {"params": total, "nonzero": total - pruned}


def _example(input_shape: tuple[int, ...], device, dtype: torch.dtype | None) -> torch.Tensor:
    # token-id models take integer inputs: zeros are a valid token everywhere
    return torch.zeros((1, *input_shape), device=device, dtype=dtype or torch.float32)


def _counted_forward(model: nn.Module, input_shape: tuple[int, ...], device, dtype) -> tuple[dict, dict]:
    """One eval-mode forward of one sample under the FLOP counter, with hooks on the weight owners.

    Gradients stay enabled and attention runs on its math kernel: PyTorch's fused inference kernels (``nn.TransformerEncoderLayer`` and
    ``nn.MultiheadAttention``'s fast path) run only without them and would hide their products from
    both counts. Returns (per-module FLOPs, per-weight FLOPs)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    per_weight: dict[str, float] = {}
    conv1d = hf_conv1d_type()

    def add(weight: torch.Tensor | None, flops: float) -> None:
        key = name_of.get(id(weight)) if weight is not None else None
        if key is not None:
            per_weight[key] = per_weight.get(key, 0.0) + flops

    def hook(module, inputs, output):
        if isinstance(module, CONV_TYPES):
            add(module.weight, 2.0 * module.weight.numel() * (output[0].numel() // module.out_channels))
        elif isinstance(module, nn.Linear):
            add(module.weight, 2.0 * module.weight.numel() * (inputs[0].numel() // module.in_features))
        elif conv1d is not None and isinstance(module, conv1d):
            add(module.weight, 2.0 * module.weight.numel() * (inputs[0].numel() // module.weight.shape[0]))
        elif isinstance(module, nn.MultiheadAttention):
            q, k, v = (tuple(inputs) + (inputs[0],) * 3)[:3]
            tokens = [t.numel() // t.shape[-1] for t in (q, k, v)]
            if module.in_proj_weight is not None:  # q, k, v rows of the packed weight, each E x E
                add(module.in_proj_weight, 2.0 * module.in_proj_weight.numel() / 3 * sum(tokens))
            else:
                for w, t in zip((module.q_proj_weight, module.k_proj_weight, module.v_proj_weight), tokens):
                    add(w, 2.0 * w.numel() * t)
            add(module.out_proj.weight, 2.0 * module.out_proj.weight.numel() * tokens[0])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        # the math attention kernel is plain matmuls, which the counter sees (the fused CPU kernels it does not)
        with FlopCounterMode(display=False) as counter, torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            model(_example(input_shape, device, dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    prefix = type(model).__name__
    per_module: dict[str, float] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == prefix else key[len(prefix) + 1:] if key.startswith(prefix + ".") else key
        per_module[name] = float(sum(ops.values()))
    return per_module, per_weight


def module_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, float]:
    """``{module name: FLOPs of one sample}`` for every module (a parent includes its children; the
    model itself is ``""``), counted in eval mode."""
    return _counted_forward(model, input_shape, device, dtype)[0]


def weight_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, float]:
    """``{weight name: FLOPs its products cost for one sample}``: ``2 · numel · positions`` with positions
    the output pixels of a convolution, the rows (tokens) a linear layer, HF ``Conv1D`` or attention
    projection multiplies. Names are ``named_parameters()``'s, so a tied tensor (GPT-2's ``lm_head`` and
    ``wte``) sums its uses under one name, and ``nn.MultiheadAttention``'s functional projections count."""
    return _counted_forward(model, input_shape, device, dtype)[1]


def count_flops(model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, torch.Tensor] | None = None,
                device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict[str, float]:
    """``{"flops": dense, "sparse_flops": with masks}`` for one sample of shape ``input_shape`` (``dtype``:
    the input's, e.g. ``torch.long`` for token ids).

    A mask may be a bool tensor or any tensor whose mean is the layer's density; a masked weight saves
    its share of :func:`weight_flops`.
    """
    per_module, per_weight = _counted_forward(model, input_shape, device, dtype)
    dense = per_module.get("", 0.0)
    saved = sum(per_weight.get(name, 0.0) * (1.0 - float(m.float().mean())) for name, m in (masks or {}).items())
    return {"flops": dense, "sparse_flops": dense - saved}
