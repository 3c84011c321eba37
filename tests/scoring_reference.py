"""Straightforward implementations of the PaI scorers and of the DPaI search, written to mirror how the
reference code bases compute them (module ``.grad`` accumulation, in-place linearisation of a model
copy, a straight-through autograd function and per-layer loops). They are slow on purpose: tests and
``benchmarks/bench_pai.py`` check that the fast paths in :mod:`prunekit.scoring` and
:mod:`prunekit.methods.dpai` give the same scores and masks.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.methods.dpai import score_optimizer
from prunekit.methods.pai import round_sparsity
from prunekit.scoring.data import Batch, threads_for
from prunekit.scoring.paths import PathCounter
from prunekit.sparsity import MaskSet, select, topk_mask


def snip_literal(model: nn.Module, masks: MaskSet, batches: Sequence[Batch],
                 loss_fn: Callable = F.cross_entropy) -> dict[str, Tensor]:
    """``loss.backward()`` per batch into ``.grad``, then ``|w * grad| / sum``."""
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        loss_fn(model(x), y).backward()
    scores = {n: (p.grad * p.detach()).abs() for n, p in zip(masks.names(), masks.params)}
    total = sum(s.sum() for s in scores.values())
    model.zero_grad(set_to_none=True)
    return {n: s / total for n, s in scores.items()}


def grasp_literal(model: nn.Module, masks: MaskSet, batches: Sequence[Batch], loss_fn: Callable = F.cross_entropy,
                  temperature: float = 200.0, eps: float = 1e-10) -> dict[str, Tensor]:
    """Two passes: ``g`` without graph, then ``(g . grad L_b).backward()`` per batch into ``.grad``."""
    params = masks.params
    model.zero_grad(set_to_none=True)
    g = None
    for x, y in batches:
        grads = torch.autograd.grad(loss_fn(model(x) / temperature, y), params)
        g = [t.clone() for t in grads] if g is None else [a + b for a, b in zip(g, grads)]
    for x, y in batches:
        grads = torch.autograd.grad(loss_fn(model(x) / temperature, y), params, create_graph=True)
        torch.stack([(a * b).sum() for a, b in zip(g, grads)]).sum().backward()
    scores = {n: (p.grad * p.detach()) for n, p in zip(masks.names(), params)}
    model.zero_grad(set_to_none=True)
    norm = torch.stack([s.sum() for s in scores.values()]).sum().abs() + eps
    return {n: s / norm for n, s in scores.items()}


def synflow_literal(model: nn.Module, masks: MaskSet, input_shape: Sequence[int], sparsity: float,
                    rounds: int = 100) -> dict[str, Tensor]:
    """SynFlow rounds on a deep copy whose whole state is made non-negative in place; global top-k on the
    exponential schedule; returns the final masks."""
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    named = dict(net.named_parameters())
    weights = [named[n] for n in masks.names()]
    current = {n: m.clone() for n, m in masks.items()}
    ones = torch.ones((1, *input_shape), device=weights[0].device)
    with threads_for(ones.device, masks.numel()):  # same numerics as the fast path
        for r in range(1, rounds + 1):
            current = _synflow_round(net, weights, current, ones, sparsity, r, rounds)
    return current


def _synflow_round(net, weights, current, ones, sparsity, r, rounds):
    with torch.no_grad():
        for n, w in zip(current, weights):
            w.mul_(current[n])
    net.zero_grad(set_to_none=True)
    net(ones).sum().backward()
    scores = {n: (w.grad * w.detach()).abs() for n, w in zip(current, weights)}
    scores = {n: s.masked_fill(~current[n], -torch.inf) for n, s in scores.items()}
    return select(scores, sparsity=round_sparsity(sparsity, r, rounds, "exponential"), allocation="global")


class _TopKStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, magnitude, keep):
        return topk_mask(magnitude, keep).to(magnitude.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def dpai_literal(model: nn.Module, names: Sequence[str], zeros: Sequence[int], input_shape: Sequence[int],
                 scores: Tensor, alpha: float = 0.99, beta: float = 0.5, lr: float = 0.005,
                 steps: int = 3000) -> tuple[list[Tensor], list[list[float]]]:
    """DPaI per layer, as ``npb.py`` organises it: one score tensor per layer, an STE top-k, per-layer
    node/kernel bookkeeping. Returns the final masks and ``[log P, nodes, kernels, params]`` per step."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    layer_scores = [s.detach().clone().view(shape).requires_grad_(True)
                    for s, shape in zip(scores.split([sh.numel() for sh in shapes]), shapes)]
    keeps = [sh.numel() - z for sh, z in zip(shapes, zeros)]
    opt = score_optimizer(layer_scores, lr)
    history = []
    with PathCounter(model, names, input_shape) as counter, threads_for(scores.device, scores.numel()):
        for step in range(steps + 1):
            masks = [_TopKStraightThrough.apply(s.abs(), k) for s, k in zip(layer_scores, keeps)]
            for s in layer_scores:
                s.grad = None
            log_p = counter.log_paths(masks)
            log_p.backward()
            nodes = kernels = n_params = 0
            new_grads = []
            for s, m in zip(layer_scores, masks):
                g = s.grad
                eff = (g.abs() * m.detach()) > 0
                node = eff.flatten(1).any(1).view(-1, *([1] * (g.dim() - 1)))
                kernel = eff.flatten(2).any(2)[..., None, None] if g.dim() == 4 else eff
                nodes += int(node.sum())
                kernels += int(kernel.sum())
                n_params += int(eff.sum())
                new_grads.append(-((1 - alpha) * g + alpha * ((1 - beta) * (g * ~node) + beta * (g * ~kernel))))
            history.append([float(log_p.detach()), nodes, kernels, n_params])
            if step == steps:
                break
            for s, ng in zip(layer_scores, new_grads):
                s.grad = ng
            opt.step()
    return [topk_mask(s.detach().abs(), k) for s, k in zip(layer_scores, keeps)], history
