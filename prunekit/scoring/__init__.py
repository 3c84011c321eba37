"""Saliency criteria for pruning at initialization.

A *scorer* has the signature ``scorer(model, masks, ctx) -> {parameter name: score tensor}``: higher
scores are kept. ``model`` is any ``nn.Module``, ``masks`` the :class:`~prunekit.sparsity.MaskSet` of
its prunable weights (already-pruned weights are zero), ``ctx`` a
:class:`~prunekit.methods.PruneContext` (``batches``, ``loss_fn``). The ``*_scores`` functions take
explicit arguments; :data:`SCORERS` wraps them with the reference defaults.

* :func:`snip_scores` — SNIP (Lee et al., ICLR 2019)
* :func:`grasp_scores` / :func:`hessian_gradient_product` — GraSP (Wang et al., ICLR 2020)
* :func:`synflow_scores` / :class:`SynFlowScorer` — SynFlow (Tanaka et al., NeurIPS 2020)
* :func:`prospr_scores` — ProsPr meta-gradients (Alizadeh et al., ICLR 2022)
* :func:`magnitude_scores` — |w|
* :class:`PathCounter` — the path-count forward of NPB / DPaI (Pham et al. 2023; Xiang et al. 2025)

Lookahead (LAP) scores live in :mod:`prunekit.scoring.lap`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..modelio import concat_batches
from .data import input_shape_from, take_samples
from .gradient import grasp_scores, hessian_gradient_product, magnitude_scores, snip_scores
from .paths import IDENTITY_TYPES, FlatLayout, PathCounter
from .prospr import prospr_scores
from .synflow import SynFlowScorer, synflow_scores


def _snip(model, masks, ctx, num_samples: int = 100):
    data = take_samples(ctx.batches, num_samples, masks.params[0].device, "snip")
    return snip_scores(model, masks, data, ctx.loss_fn, output_fn=ctx.output_fn)


def _grasp(model, masks, ctx, num_samples: int = 100):
    data = take_samples(ctx.batches, num_samples, masks.params[0].device, "grasp")
    return grasp_scores(model, masks, data, ctx.loss_fn, output_fn=ctx.output_fn)


def _synflow(model, masks, ctx, input_shape=None):
    return synflow_scores(model, masks, input_shape_from(input_shape, ctx.batches, "synflow"))


def _prospr(model, masks, ctx, num_samples: int = 128, steps: int = 3, lr: float = 0.1):
    data = take_samples(ctx.batches, num_samples, masks.params[0].device, "prospr")
    x, y = concat_batches([b[0] for b in data]), torch.cat([b[1] for b in data])
    return prospr_scores(model, masks, x, y, ctx.loss_fn, steps, lr, output_fn=ctx.output_fn)


def _magnitude(model, masks, ctx):
    return magnitude_scores(model, masks)


#: ``{name: scorer(model, masks, ctx, **options)}``
SCORERS: dict[str, Callable[..., Any]] = {"snip": _snip, "grasp": _grasp, "synflow": _synflow,
                                          "prospr": _prospr, "magnitude": _magnitude}


__all__ = ["IDENTITY_TYPES", "SCORERS", "FlatLayout", "PathCounter", "SynFlowScorer", "grasp_scores",
           "hessian_gradient_product", "magnitude_scores", "prospr_scores", "snip_scores", "synflow_scores"]
