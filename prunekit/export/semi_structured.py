"""N:M (2:4) masks and PyTorch's semi-structured sparse tensors (CUDA).

Mishra et al., "Accelerating Sparse Deep Neural Networks" (NVIDIA, 2021): keeping 2 of every 4
consecutive input weights lets sparse tensor cores (Ampere and later) skip the zeros.
:func:`nm_masks` gives such masks (largest magnitude per group, ``prunekit.sparsity.nm_mask``) for every
linear layer whose input width allows it; :func:`to_semi_structured` stores those weights as
``torch.sparse.SparseSemiStructuredTensor`` (half/bfloat16 on a CUDA device with compute capability
>= 8.0). On CPU there is no such kernel and the conversion refuses with a ConfigError.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import Tensor, nn
from torch.sparse import to_sparse_semi_structured

from ..errors import ConfigError
from ..sparsity import nm_mask


def nm_masks(model: nn.Module, n: int = 2, m: int = 4) -> dict[str, Tensor]:
    """``{"<linear>.weight": N:M mask}`` for every ``nn.Linear`` whose input width is a multiple of ``m``."""
    return {f"{name}.weight": nm_mask(mod.weight.detach().abs(), n, m, f"{name}.weight")
            for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and mod.in_features % m == 0}


def semi_structured_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


@torch.no_grad()
def to_semi_structured(model: nn.Module, masks: Mapping[str, Tensor], dtype: torch.dtype = torch.float16) -> nn.Module:
    """A copy of ``model`` (on its CUDA device, in ``dtype``) whose 2:4-masked linear weights are
    semi-structured sparse tensors; other layers stay dense."""
    device = next(model.parameters()).device
    if not semi_structured_supported(device):
        raise ConfigError(f"semi-structured sparsity needs a CUDA device with compute capability >= 8.0; "
                          f"the model is on {device}")
    out = copy.deepcopy(model).to(dtype).eval()
    for name, mask in masks.items():
        module_name = name.rpartition(".")[0]
        mod = out.get_submodule(module_name)
        if not isinstance(mod, nn.Linear):
            continue
        dense = mod.weight.detach() * mask.to(device, dtype)
        mod.weight = nn.Parameter(to_sparse_semi_structured(dense), requires_grad=False)
    return out
