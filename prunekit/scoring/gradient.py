"""Gradient-based saliencies at initialization: SNIP, GraSP, magnitude.

* SNIP — Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
  ICLR 2019. Score ``|w * dL/dw|`` with the gradient summed over the scoring batches (Synaptic-Flow
  ``Pruners/pruners.py: SNIP`` accumulates the mask gradients batch by batch, then takes ``abs``),
  normalised to sum 1 over all prunable weights.
* GraSP — Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow",
  ICLR 2020, as in Synaptic-Flow ``GraSP``: logits divided by a temperature of 200,
  ``g = sum_b grad L_b`` (no graph), ``Hg = sum_b grad(g . grad L_b)``, score ``(Hg) * w`` divided by
  ``|sum(score)| + 1e-10``. **Sign convention**: the *highest* scores are kept. The paper writes
  ``S(-w) = -w * Hg`` and removes the highest, which is the same selection; the Synaptic-Flow code
  returns ``+ (Hg) * w`` and keeps the highest ("negate to remove top percent"). The score is signed:
  do not take ``abs``.
* magnitude — ``|w|`` (Synaptic-Flow ``Mag``).

Every scorer has the signature ``scorer(model, masks, ctx) -> {parameter name: score}`` (see
:mod:`prunekit.scoring`); the ``*_scores`` functions below take explicit arguments.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from ..modelio import ModelIO, OutputFn
from ..sparsity import MaskSet
from .data import Batch
from .second_order import math_attention, second_order_convs

LossFn = Callable[[Tensor, Tensor], Tensor]
SecondOrder = Literal["fused", "autograd"]


def magnitude_scores(model: nn.Module, masks: MaskSet) -> dict[str, Tensor]:
    """``|w|`` per prunable weight."""
    return {n: p.detach().abs() for n, p in zip(masks.names(), masks.params)}


def _summed_gradients(model: nn.Module, params: Sequence[Tensor], batches: Sequence[Batch], io: ModelIO,
                      scale: float = 1.0) -> list[Tensor]:
    total: list[Tensor] | None = None
    for x, y in batches:
        grads = torch.autograd.grad(io.loss(model, x, y, scale), params)
        total = list(grads) if total is None else torch._foreach_add(total, grads)
    assert total is not None
    return total


def snip_scores(model: nn.Module, masks: MaskSet, batches: Sequence[Batch], loss_fn: LossFn | None = None,
                normalize: bool = True, output_fn: OutputFn | None = None) -> dict[str, Tensor]:
    """SNIP connection sensitivity ``|w * sum_b dL_b/dw|`` (normalised to sum 1 by default).

    Only the prunable weights are differentiated (``autograd.grad``), so no ``.grad`` of the model is
    touched and biases/normalisation parameters cost no gradient work.
    """
    params = masks.params
    grads = _summed_gradients(model, params, batches, ModelIO(output_fn, loss_fn))
    scores = torch._foreach_mul(grads, [p.detach() for p in params])
    torch._foreach_abs_(scores)
    if normalize:
        total = torch.stack([s.sum() for s in scores]).sum()
        torch._foreach_div_(scores, total)
    return dict(zip(masks.names(), scores))


@math_attention
def hessian_gradient_product(model: nn.Module, params: Sequence[Tensor], batches: Sequence[Batch],
                             loss_fn: LossFn | None = None, temperature: float = 200.0,
                             two_pass: bool = False, second_order: SecondOrder = "fused",
                             output_fn: OutputFn | None = None) -> list[Tensor]:
    """``H g`` with ``g = sum_b grad L_b`` and ``H`` the Hessian of ``sum_b L_b``, at logits / T.

    ``two_pass=True`` follows the reference literally: one pass for ``g`` without a graph, a second
    forward per batch for ``grad(g . grad L_b)``. The default computes every batch's gradient once with
    its graph kept, sums the detached gradients into ``g`` and differentiates ``sum_b g . grad L_b`` in
    one double-backward: the same quantity with one forward and one backward fewer per batch, at the
    cost of holding all the scoring batches' graphs in memory at once.

    ``second_order="fused"`` runs the convolutions with :func:`~prunekit.scoring.second_order.second_order_convs`
    (plain convolution kernels in the double backward, eval-mode BatchNorm folded): the same product up
    to float rounding, about a quarter cheaper on a ResNet. ``"autograd"`` keeps PyTorch's own double
    backward, the reference's arithmetic bit for bit.
    """
    if second_order == "fused":
        with second_order_convs(model):
            return hessian_gradient_product(model, params, batches, loss_fn, temperature, two_pass, "autograd",
                                            output_fn)
    if second_order != "autograd":
        raise ValueError(f"second_order must be 'fused' or 'autograd', got {second_order!r}")
    io = ModelIO(output_fn, loss_fn)
    params = list(params)
    if two_pass:
        g = _summed_gradients(model, params, batches, io, temperature)
        hg: list[Tensor] | None = None
        for x, y in batches:
            grads = torch.autograd.grad(io.loss(model, x, y, temperature), params, create_graph=True)
            dot = torch.stack([(a * b).sum() for a, b in zip(g, grads)]).sum()
            part = torch.autograd.grad(dot, params)
            hg = list(part) if hg is None else torch._foreach_add(hg, part)
        assert hg is not None
        return hg
    per_batch = []
    for x, y in batches:
        per_batch.append(torch.autograd.grad(io.loss(model, x, y, temperature), params, create_graph=True))
    g = [t.detach() for t in per_batch[0]]
    for gb in per_batch[1:]:  # same summation order as the two-pass path
        g = torch._foreach_add(g, [t.detach() for t in gb])
    dot = torch.stack([(a * b).sum() for gb in per_batch for a, b in zip(g, gb)]).sum()
    return list(torch.autograd.grad(dot, params))


def grasp_scores(model: nn.Module, masks: MaskSet, batches: Sequence[Batch], loss_fn: LossFn | None = None,
                 temperature: float = 200.0, eps: float = 1e-10, two_pass: bool = False,
                 second_order: SecondOrder = "fused", output_fn: OutputFn | None = None) -> dict[str, Tensor]:
    """GraSP ``(Hg) * w / (|sum| + eps)``; keep the highest (see the module docstring for the sign)."""
    params = masks.params
    hg = hessian_gradient_product(model, params, batches, loss_fn, temperature, two_pass, second_order, output_fn)
    scores = torch._foreach_mul(hg, [p.detach() for p in params])
    norm = torch.stack([s.sum() for s in scores]).sum().abs() + eps
    torch._foreach_div_(scores, norm)
    return dict(zip(masks.names(), scores))
