"""CSR sparse linear layers for very high unstructured sparsity on CPU.

A masked ``nn.Linear`` whose weight keeps only a few percent of its entries can run as a CSR sparse x
dense product (``torch.sparse.mm``); below roughly 5-10% density this can beat the dense GEMM on CPU.
:func:`to_csr` swaps such layers in a copy of the model; ``prunekit.report.latency`` measures whether
it pays off.
"""
from __future__ import annotations

import copy
import warnings
from typing import Mapping

import torch
from torch import Tensor, nn


class CSRLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored in CSR (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


@torch.no_grad()
def to_csr(model: nn.Module, masks: Mapping[str, Tensor], max_density: float = 0.1) -> nn.Module:
    """A copy of ``model`` with masks applied and every linear layer whose mask density is at most
    ``max_density`` replaced by :class:`CSRLinear`."""
    masks = dict(masks.items())
    out = copy.deepcopy(model).eval()
    named = dict(out.named_parameters())
    for name, m in masks.items():
        named[name].mul_(m.to(named[name].dtype))
    for name, module in list(out.named_modules()):
        m = masks.get(f"{name}.weight")
        if isinstance(module, nn.Linear) and m is not None and float(m.float().mean()) <= max_density:
            parent, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, attr, CSRLinear(module))
    return out
