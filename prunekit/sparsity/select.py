"""The one selection pipeline: scores -> masks, for every method.

:func:`select` takes per-layer scores and returns boolean keep-masks for an ``allocation`` (how the
budget is spread: one ``global`` threshold, a registered allocator -- ``uniform``, ``erk``, ``er`` -- or a
custom ``{layer name or glob: sparsity}`` map) and a ``structure`` (``unstructured``, whole ``filter``
or ``channel`` units, or ``N:M`` groups). Existing ``masks`` make it nested: a pruned weight never
comes back. :func:`keep_counts` is the budget half alone (per-level plans, DPaI's search) and
:class:`FlatSelector` the same selection for loops that select again every round over one flat buffer
(SynFlow, DPaI, HYDRA/BiP); the fast paths are the primitives of :mod:`prunekit.sparsity.topk`, which all
give the same mask for the same scores.

Counting follows the references: a layer with ``numel`` weights at sparsity ``s`` loses
``int(s * numel)`` weights (DPaI ``num_zeros``, BiP's ``j``, Synaptic-Flow's ``k``) and keeps the rest.
Selection is exact: ties at the threshold are broken by index (the lower flat index is kept; across
layers: layer order, then index), so the kept count is always the requested one. ``counting="reference"``
is GraNet's threshold rule instead (see :func:`select`).
"""
from __future__ import annotations

import re
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, MaskError
from ..registry import Registry, suggest
from .allocate import GLOBAL, allocate
from .topk import SegmentTopK, WarmTopK, keep_above_kth, keep_largest, topk_mask

Counts = "int | dict[str, int]"

STRUCTURES: Registry = Registry("structure")
STRUCTURES.add("unstructured", None, help="any weight")
STRUCTURES.add("filter", 0, help="whole output units (conv filters, linear rows), ranked by the L2 norm")
STRUCTURES.add("channel", 1, help="whole input units (conv input channels, linear columns), by the L2 norm")
STRUCTURES.add("N:M", None, help="N kept in every group of M consecutive input weights, e.g. 2:4")
_NM = re.compile(r"^(\d+):(\d+)$")


def structure_kind(structure: str) -> str:
    """``N:M`` for a pattern like ``2:4``, else the structure's name."""
    return "N:M" if _NM.match(str(structure)) else str(structure)


def check_structure(structure: str, allowed: Sequence[str], where: str = "structure") -> str:
    """The structure if its kind is one of ``allowed`` (names of :data:`STRUCTURES`); else one line."""
    kind = structure_kind(structure)
    if kind not in allowed:
        raise ConfigError(f"{where}={structure!r} is not allowed{suggest(kind, list(allowed))}; allowed: "
                          f"{', '.join(allowed)}" + (" (e.g. 2:4)" if "N:M" in allowed else ""))
    if kind == "N:M":
        n, m = (int(v) for v in _NM.match(structure).groups())
        if not 0 < n < m:
            raise ConfigError(f"{where}={structure!r}: N:M needs 0 < N < M")
    return structure


def nm_sparsity(structure: str) -> float | None:
    """The sparsity an ``N:M`` structure fixes (``1 - N/M``); None for other structures."""
    match = _NM.match(str(structure))
    return None if match is None else 1.0 - int(match.group(1)) / int(match.group(2))


def num_zeros(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a layer at ``sparsity`` loses (reference rounding: floor)."""
    return int(sparsity * numel)


def num_keep(numel: int, sparsity: float) -> int:
    return numel - num_zeros(numel, sparsity)


def keep_counts(shapes: Mapping[str, Sequence[int]], sparsity: float, allocation="global",
                units: Mapping[str, int] | None = None, scores: Mapping[str, Tensor] | None = None):
    """How many entries (weights, or ``units`` per layer) each layer keeps at ``sparsity``.

    ``global``: one total (an int), or with ``scores`` the per-layer counts of one global top-k of them;
    an allocator or a custom map: ``{layer: numel - int(s_l * numel)}`` with the budgets computed from
    the full weight ``shapes``.
    """
    sizes = {n: (units[n] if units is not None else _numel(s)) for n, s in shapes.items()}
    if allocation == GLOBAL:
        total = num_keep(sum(sizes.values()), sparsity)
        if scores is None:
            return total
        kept = select(scores, keep=total)
        return {n: int(kept[n].sum()) for n in shapes}
    budgets = allocate(allocation, shapes, sparsity)
    return {n: num_keep(sizes[n], budgets[n]) for n in shapes}


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def select(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None, *,
           sparsity: float | None = None, keep=None, allocation="global", structure: str = "unstructured",
           unit_dims: Mapping[str, int] | None = None, counting: Literal["exact", "reference"] = "exact",
           eligible_counts: Mapping[str, int] | None = None) -> dict[str, Tensor]:
    """Keep-masks (bool, each score's shape) of the highest ``scores``.

    The budget is ``keep`` (an int: one global count; a dict: per layer, in units for filter/channel)
    or is computed from ``sparsity`` and ``allocation`` (:func:`keep_counts`). ``masks``: entries already
    pruned are never kept (each layer keeps at most its survivors; ``eligible_counts`` are their
    numbers if known, saving a count). ``unit_dims``: each weight's unit axis for filter/channel (default
    0 or 1). ``counting="reference"`` (GraNet's ``Masking``, unstructured): the global step keeps
    ``score > t``, ``t`` the ``int(N (1 - s))``-th largest, and a layer-wise step keeps ``score >= t`` with
    ``t`` the ``int(n (1 - s_l))``-th largest, ignoring ``masks`` (ties all go the same way).
    """
    kind = structure_kind(structure)
    if kind == "N:M":
        return _select_nm(scores, masks, structure)
    if kind in ("filter", "channel"):
        return _select_units(scores, masks, sparsity, keep, allocation, kind, unit_dims)
    if kind != "unstructured":
        check_structure(structure, STRUCTURES.names())
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    if counting == "reference":
        return _select_reference(scores, sparsity, allocation, shapes)
    if keep is None:
        keep = keep_counts(shapes, _required(sparsity), allocation)
    if isinstance(keep, int):
        return _select_global(scores, masks, keep, eligible_counts)
    out = {}
    for n, s in scores.items():
        s = s.detach()
        if masks is None:
            out[n] = topk_mask(s, keep[n])
        else:
            count = eligible_counts[n] if eligible_counts is not None else int(torch.count_nonzero(masks[n]))
            out[n] = keep_largest(_no_nan(s), min(keep[n], count), masks[n], count=count)
    return out


def _required(sparsity: float | None) -> float:
    if sparsity is None:
        raise MaskError("select needs a sparsity or explicit keep counts")
    return sparsity


def _no_nan(s: Tensor) -> Tensor:
    # NaN ranks lowest, as in topk_mask (the bracketed selection needs ordered values)
    return torch.nan_to_num(s, nan=-torch.inf) if s.is_floating_point() else s


def _select_global(scores, masks, k: int, eligible_counts) -> dict[str, Tensor]:
    """One top-k over the concatenation (ties: layer order, then index), in the scores' own dtype."""
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    flat = torch.cat([scores[n].detach().reshape(-1) for n in names])
    if masks is None:
        kept = topk_mask(flat, k)
    else:
        eligible = torch.cat([masks[n].reshape(-1) for n in names])
        count = sum(eligible_counts.values()) if eligible_counts is not None else int(torch.count_nonzero(eligible))
        kept = keep_largest(_no_nan(flat), min(k, count), eligible, count=count)
    return {n: part.view(scores[n].shape) for n, part in zip(names, kept.split(sizes))}


def _select_reference(scores, sparsity, allocation, shapes) -> dict[str, Tensor]:
    sparsity = _required(sparsity)
    if allocation == GLOBAL:
        names = list(scores)
        flat = torch.cat([scores[n].detach().reshape(-1) for n in names])
        kept = keep_above_kth(flat, int(flat.numel() * (1.0 - sparsity)))
        return {n: part.view(shapes[n]) for n, part in zip(names, kept.split([scores[n].numel() for n in names]))}
    budgets = allocate(allocation, shapes, sparsity)
    return {n: keep_above_kth(s.detach(), int(s.numel() * round(1.0 - budgets[n], 12)), strict=False)
            for n, s in scores.items()}


def _select_units(scores, masks, sparsity, keep, allocation, kind, unit_dims) -> dict[str, Tensor]:
    """Whole units: each ranked by the L2 norm of its |scores|; a unit with no survivor ranks last."""
    dims = {n: (unit_dims[n] if unit_dims is not None else STRUCTURES.get(kind)) for n in scores}
    unit = {}
    for n, s in scores.items():
        other = [d for d in range(s.dim()) if d != dims[n]]
        u = s.detach().float().pow(2).sum(dim=other).sqrt()
        unit[n] = u if masks is None else torch.where(masks[n].any(dim=other), u, -torch.inf)
    if keep is None:
        shapes = {n: tuple(s.shape) for n, s in scores.items()}
        keep = keep_counts(shapes, _required(sparsity), allocation, units={n: u.numel() for n, u in unit.items()})
    kept = select(unit, keep=keep)
    out = {}
    for n, s in scores.items():
        shape = [1] * s.dim()
        shape[dims[n]] = -1
        out[n] = kept[n].view(shape).expand_as(s).contiguous()
    return out


def _select_nm(scores, masks, structure: str) -> dict[str, Tensor]:
    n_keep, m = (int(v) for v in _NM.match(structure).groups())
    out = {}
    for n, s in scores.items():
        s = s.detach()
        if masks is not None:
            s = s.masked_fill(~masks[n], -torch.inf)
        kept = nm_mask(s, n_keep, m, n)
        out[n] = kept if masks is None else kept & masks[n]
    return out


class FlatSelector:
    """:func:`select` for loops over one flat score vector whose segments are the layers, selecting again
    every round without fresh buffers: ``global`` is one segment, a per-layer allocation one per layer.
    ``out``: the bool buffer written (default: the selector's own); ``warm``: reuse the last threshold
    (:class:`~prunekit.sparsity.topk.WarmTopK`, global only, CPU only). Whole units and ``N:M`` select
    through :func:`select` on the layers' views (counts in units; N:M counts are fixed by the pattern)."""

    def __init__(self, shapes: Mapping[str, Sequence[int]], allocation="global", device="cpu",
                 out: Tensor | None = None, warm: bool = False, structure: str = "unstructured",
                 unit_dims: Mapping[str, int] | None = None):
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.allocation, self.structure = allocation, structure
        self._fixed: list[int] | None = None
        kind = structure_kind(structure)
        if kind in ("filter", "channel"):
            dims = unit_dims if unit_dims is not None else dict.fromkeys(self.shapes, STRUCTURES.get(kind))
            self.unit_dims = dict(dims)
            self.units = {n: s[self.unit_dims[n]] for n, s in self.shapes.items()}
        else:
            self.unit_dims, self.units = None, None
        self.sizes = [_numel(s) for s in self.shapes.values()]
        self.is_global = allocation == GLOBAL
        self._topk = None  # the key buffers of the single-weight selection, made only where it runs
        if kind == "unstructured":
            self._topk = SegmentTopK([sum(self.sizes)] if self.is_global else self.sizes, device, out=out)
            self.buffer = self._topk.buf
        else:
            self.buffer = out if out is not None else torch.empty(sum(self.sizes), dtype=torch.bool, device=device)
        self._warm = WarmTopK(0) if warm and self.is_global and torch.device(device).type == "cpu" else None

    @classmethod
    def for_counts(cls, shapes: Mapping[str, Sequence[int]], keep, device="cpu", **kwargs) -> "FlatSelector":
        """A selector segmented like an explicit budget (an int: one global segment; a dict: per layer),
        whose :meth:`counts` are that budget."""
        sel = cls(shapes, GLOBAL if isinstance(keep, int) else None, device, **kwargs)
        sel._fixed = [int(keep)] if isinstance(keep, int) else [int(keep[n]) for n in sel.shapes]
        return sel

    def counts(self, sparsity: float | None = None) -> list[int]:
        """Kept entries (units for filter/channel) per segment at ``sparsity`` (the fixed budget of a
        selector made by :meth:`for_counts`)."""
        if self._fixed is not None:
            return self._fixed
        keep = keep_counts(self.shapes, _required(sparsity), self.allocation, units=self.units)
        return [keep] if isinstance(keep, int) else [keep[n] for n in self.shapes]

    def _views(self, flat: Tensor) -> dict[str, Tensor]:
        return {n: v.view(s) for (n, s), v in zip(self.shapes.items(), flat.split(self.sizes))}

    def __call__(self, scores: Tensor, keep: Sequence[int], nonnegative: bool = False,
                 active: Tensor | None = None) -> Tensor:
        """The buffer, holding the ``keep[i]`` largest entries of each segment (``active``: entries that
        may be kept at all, as in :class:`~prunekit.sparsity.topk.SegmentTopK`)."""
        if self.structure != "unstructured":
            counts = int(keep[0]) if self.is_global else dict(zip(self.shapes, (int(k) for k in keep)))
            kept = select(self._views(scores), None if active is None else self._views(active), keep=counts,
                          structure=self.structure, unit_dims=self.unit_dims)
            return torch.cat([kept[n].reshape(-1) for n in self.shapes], out=self.buffer)
        if self._warm is not None and active is None:
            self._warm.k = int(keep[0])
            return self._warm(scores, self.buffer)
        return self._topk(scores, keep, nonnegative=nonnegative, active=active)


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
