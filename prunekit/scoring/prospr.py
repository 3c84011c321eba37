"""ProsPr: Alizadeh, Tailor, Zintgraf, van Amersfoort, Farquhar, Lane, Gal, "Prospect Pruning: Finding
Trainable Weights at Initialization using Meta-Gradients", ICLR 2022 (``mil-ad/prospr``,
``prospr/prospr.py: prune``, "full" meta-gradients).

Every prunable weight gets a multiplicative gate ``c = 1``; starting from ``w ⊙ c`` (other parameters as
they are) the network takes ``steps`` SGD steps on one batch (the same batch every step: the reference's
default ``--new-data-in-inner False``), keeping the graph; the score is ``|dL(w_steps)/dc|``, the gradient
of the loss after the steps, through the steps, with respect to the gates. With ``steps=0`` this is
SNIP's ``|w * dL/dw|``. Batch-norm running statistics are updated on copies (the model is not touched).
With momentum, the first step's buffer is a detached copy of the gradient, as in the reference's
``functional_sgd``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..modelio import ModelIO
from ..sparsity import MaskSet
from .second_order import math_attention


class _Functional:
    """``model`` called with the given parameter and buffer values (``torch.func.functional_call``)."""

    def __init__(self, model: nn.Module, values: dict[str, Tensor]):
        self.model, self.values = model, values

    def __call__(self, *args, **kwargs):
        return functional_call(self.model, self.values, args, kwargs)


@math_attention
def prospr_scores(model: nn.Module, masks: MaskSet, x: Tensor, y: Tensor, loss_fn: Callable | None = None,
                  steps: int = 3, lr: float = 0.1, momentum: float = 0.0,
                  output_fn: Callable | None = None) -> dict[str, Tensor]:
    """``{name: |meta-gradient|}`` after ``steps`` differentiable SGD steps on ``(x, y)``."""
    io = ModelIO(output_fn, loss_fn)
    names = masks.names()
    gates = {n: torch.ones_like(p, requires_grad=True) for n, p in zip(names, masks.params)}
    fast = {n: p.detach() * gates[n] if n in gates else p.detach().clone().requires_grad_(p.is_floating_point())
            for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    momenta: dict[str, Tensor] = {}
    for _ in range(steps):
        loss = io.loss(_Functional(model, {**fast, **buffers}), x, y)
        keys = [n for n, t in fast.items() if t.requires_grad]
        grads = torch.autograd.grad(loss, [fast[n] for n in keys], create_graph=True)
        for n, g in zip(keys, grads):
            if momentum:
                g = momenta[n] = g.detach().clone() if n not in momenta else momenta[n] * momentum + g
            fast[n] = fast[n] - lr * g
    loss = io.loss(_Functional(model, {**fast, **buffers}), x, y)
    meta = torch.autograd.grad(loss, list(gates.values()))
    return {n: g.abs() for n, g in zip(names, meta)}
