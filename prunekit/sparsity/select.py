"""Turning scores into masks: exact top-k, N:M and whole filter/channel selection.

Counting follows the references: a layer with ``numel`` weights at sparsity ``s`` loses
``int(s * numel)`` weights (DPaI ``num_zeros``, BiP's ``j``, Synaptic-Flow's ``k``) and keeps the rest.
Selection is exact: ties at the threshold are broken by index (the lower flat index is kept), so the
kept count is always the requested one and the result is deterministic.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..errors import MaskError


def num_zeros(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a layer at ``sparsity`` loses (reference rounding: floor)."""
    return int(sparsity * numel)


def num_keep(numel: int, sparsity: float) -> int:
    return numel - num_zeros(numel, sparsity)


def topk_mask(score: Tensor, k: int | Tensor, out: Tensor | None = None) -> Tensor:
    """Boolean mask (shape of ``score``) keeping the ``k`` largest entries, ties by lower index.

    Uses one selection (``kthvalue``, O(n)) instead of a full sort. ``k`` may be a 0-d tensor, so no
    host sync is needed. ``-inf`` scores are valid (already-pruned entries) and NaN is treated as the
    smallest value.
    """
    flat = score.detach().reshape(-1)
    n = flat.numel()
    if isinstance(k, int):
        if not 0 <= k <= n:
            raise MaskError(f"top-k asked to keep {k} of {n} entries")
        if k == n:
            keep = torch.ones(n, dtype=torch.bool, device=flat.device)
            return _finish(keep, score, out)
        if k == 0:
            keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
            return _finish(keep, score, out)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    flat = torch.nan_to_num(flat, nan=-torch.inf)
    if isinstance(k, int):
        threshold = torch.kthvalue(flat, n - k).values
    else:  # tensor k: sort-free threshold via kthvalue needs a python int; fall back to sort
        k = k.to(torch.long)
        ordered = torch.sort(flat, descending=True).values
        threshold = torch.where(k > 0, ordered[(k - 1).clamp(min=0)], torch.inf)
        threshold = torch.where(k < n, threshold, -torch.inf)
        keep = flat > threshold
        need = k - keep.sum()
        tied = flat == threshold
        keep |= tied & (torch.cumsum(tied, 0) <= need)
        return _finish(keep, score, out)
    keep = flat > threshold
    tied = flat == threshold
    need = k - keep.sum()
    keep |= tied & (torch.cumsum(tied, 0) <= need)
    return _finish(keep, score, out)


def _finish(keep: Tensor, score: Tensor, out: Tensor | None) -> Tensor:
    keep = keep.view(score.shape)
    if out is None:
        return keep
    out.copy_(keep)
    return out


def layerwise_topk(scores: Mapping[str, Tensor], sparsities: Mapping[str, float]) -> dict[str, Tensor]:
    """Per-layer top-k: layer ``name`` keeps ``numel - int(sparsity[name] * numel)`` entries."""
    return {n: topk_mask(s, num_keep(s.numel(), sparsities[n])) for n, s in scores.items()}


def global_topk(scores: Mapping[str, Tensor], sparsity: float | None = None, k: int | None = None) -> dict[str, Tensor]:
    """One threshold across layers: keep the ``k`` (or ``N - int(sparsity * N)``) largest in total.

    Ties are broken by position in the concatenation (layer order, then flat index).
    """
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    total = sum(sizes)
    if k is None:
        if sparsity is None:
            raise ValueError("global_topk needs sparsity or k")
        k = num_keep(total, sparsity)
    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    keep = topk_mask(flat, k)
    return {n: part.view(scores[n].shape) for n, part in zip(names, torch.split(keep, sizes))}


def _group_view(score: Tensor, m: int, name: str) -> Tensor:
    """Rows of ``m`` consecutive weights along the input dimension (conv: input channels, as in
    NVIDIA's 2:4 recipe, so the groups survive a channels-last layout)."""
    if score.dim() == 4:  # (out, in, kh, kw) -> (out, kh, kw, in)
        grouped = score.permute(0, 2, 3, 1)
    elif score.dim() in (2, 3):
        grouped = score if score.dim() == 2 else score.permute(0, 2, 1)
    else:
        raise MaskError(f"{name}: N:M needs a 2-D, 3-D or 4-D weight, got shape {tuple(score.shape)}")
    if grouped.shape[-1] % m:
        raise MaskError(
            f"{name}: input dimension {grouped.shape[-1]} is not a multiple of M={m}; N:M needs whole groups"
        )
    return grouped


def nm_mask(score: Tensor, n: int, m: int, name: str = "weight") -> Tensor:
    """N:M mask: in every group of ``m`` consecutive input weights keep the ``n`` largest scores."""
    if not 0 < n <= m:
        raise MaskError(f"{name}: N:M needs 0 < N <= M, got {n}:{m}")
    grouped = _group_view(score.detach(), m, name)
    shape = grouped.shape
    groups = grouped.reshape(-1, m).float()
    # stable descending sort: equal scores keep the lower index
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True).view(shape)
    if score.dim() == 4:
        keep = keep.permute(0, 3, 1, 2)
    elif score.dim() == 3:
        keep = keep.permute(0, 2, 1)
    return keep.contiguous()


def _unit_scores(score: Tensor, dim: int, reduce: str) -> Tensor:
    s = score.detach().abs().float()
    other = [d for d in range(s.dim()) if d != dim]
    if reduce == "l1":
        return s.sum(dim=other)
    if reduce == "l2":
        return s.pow(2).sum(dim=other).sqrt()
    if reduce == "mean":
        return s.mean(dim=other)
    raise MaskError(f"unit reduce={reduce!r} is not allowed; allowed: l1, l2, mean")


def unit_mask(score: Tensor, keep_units: int, dim: int, reduce: str = "l2") -> Tensor:
    """Whole-unit mask along ``dim`` (0: output filters, 1: input channels) keeping ``keep_units``
    units with the largest aggregated |score|; the result has the full weight shape."""
    per_unit = _unit_scores(score, dim, reduce)
    keep = topk_mask(per_unit, keep_units)
    shape = [1] * score.dim()
    shape[dim] = -1
    return keep.view(shape).expand_as(score).contiguous()


def filter_mask(score: Tensor, sparsity: float, reduce: str = "l2") -> Tensor:
    """Keep ``n - int(sparsity * n)`` output filters (dim 0) of one layer."""
    return unit_mask(score, num_keep(score.shape[0], sparsity), 0, reduce)


def channel_mask(score: Tensor, sparsity: float, reduce: str = "l2") -> Tensor:
    """Keep ``n - int(sparsity * n)`` input channels (dim 1) of one layer."""
    return unit_mask(score, num_keep(score.shape[1], sparsity), 1, reduce)


def masks_from_scores(
    scores: Mapping[str, Tensor],
    sparsity: float,
    allocation: str | Mapping[str, float] = "global",
    **alloc_kwargs,
) -> dict[str, Tensor]:
    """Masks keeping the highest scores: one global threshold (``"global"``), per-layer budgets from
    an allocator (``"uniform"``, ``"erk"``, ``"er"``), or an explicit ``{name or glob: sparsity}`` map."""
    from .allocate import allocate, custom

    if isinstance(allocation, Mapping):
        shapes = {n: tuple(s.shape) for n, s in scores.items()}
        return layerwise_topk(scores, custom(shapes, allocation))
    if allocation == "global":
        return global_topk(scores, sparsity)
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    return layerwise_topk(scores, allocate(allocation, shapes, sparsity, **alloc_kwargs))
