"""Exact top-k primitives: the fast paths behind :func:`prunekit.sparsity.select.select`.

Every primitive keeps the ``k`` largest scores with ties broken by the lower flat index, so any two of
them give the same mask for the same scores; they differ only in what they are fast at:

* :func:`topk_mask` -- one selection (``kthvalue``, O(n)), ``k`` may be a 0-d tensor (no host sync).
* :func:`keep_largest` -- among ``eligible`` entries, with a sampled bracket around the threshold
  (Floyd & Rivest 1975) for the large layers of a dynamic-sparse-training update.
* :class:`SegmentTopK` -- segments of one flat vector selected again every round (SynFlow, DPaI): unique
  int64 keys ``(order-preserving bits of the float32 score) << 32 | (N - 1 - index)`` so one threshold per
  segment splits it exactly; on the CPU the threshold comes from NumPy's introselect (``np.partition``),
  about ten times faster than ``torch.kthvalue`` there.
* :class:`WarmTopK` -- a global selection repeated every step on slowly moving scores (HYDRA/BiP): it
  reuses the last threshold's neighbourhood.
* :func:`keep_above_kth` -- GraNet's reference counting (``> t`` / ``>= t`` of the k-th largest; ties
  all go the same way, so the kept count can differ from k).

Scores must not be NaN except in :func:`topk_mask` (NaN ranks lowest); -0.0 and +0.0 count as equal.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import MaskError


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


_SMALL = 1 << 15  # below this, torch.kthvalue is as fast as the sampled bracket
_SAMPLE = 4096


# --- exact selection without full sorts --------------------------------------------------------------
def kth_largest(x: Tensor, k: int, eligible: Tensor | None = None, count: int | None = None) -> Tensor:
    """Exact ``k``-th largest value (0-d tensor) of a 1-D float tensor among ``eligible`` entries (all if
    None; ``1 <= k <= count``). A strided sample brackets it (Floyd & Rivest 1975), ``kthvalue`` runs on
    the entries inside; a missed bracket falls back to ``kthvalue`` over all. Eligibility is counted
    with boolean ands, not by rewriting scores (``torch.where`` is slow on CPU)."""
    if eligible is None:
        count = x.numel()
    elif count is None:
        count = int(torch.count_nonzero(eligible))
    if count <= _SMALL:
        return torch.kthvalue(x if eligible is None else x[eligible], count - k + 1).values
    stride = max(1, count // _SAMPLE)
    sample = x[::stride] if eligible is None else x[::stride][eligible[::stride]]
    sample = torch.sort(sample, descending=True).values
    s = sample.numel()
    p = k / count
    margin = 4.0 * math.sqrt(s * p * (1.0 - p)) + 8.0
    i_hi, i_lo = int(p * s - margin), int(p * s + margin)
    above = 0
    band = eligible
    if i_hi >= 0:
        over = x > sample[i_hi]
        if eligible is not None:
            over &= eligible
        above = int(torch.count_nonzero(over))
        band = ~over if eligible is None else eligible & ~over
    if 0 <= i_lo < s:
        low = x >= sample[i_lo]
        band = low if band is None else band & low
    if band is not None and s > 0:
        inside = int(torch.count_nonzero(band))
        if above < k <= above + inside:
            return torch.kthvalue(x[band], inside - (k - above) + 1).values
    return torch.kthvalue(x if eligible is None else x[eligible], count - k + 1).values


def keep_largest(score: Tensor, k: int, eligible: Tensor | None = None, count: int | None = None) -> Tensor:
    """Bool mask (shape of ``score``) of the ``k`` largest scores among ``eligible`` entries, ties broken
    by the lower flat index. ``count``: the number of eligible entries, if known. Scores must not be NaN."""
    flat = score.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    el = None if eligible is None else eligible.reshape(-1)
    if count is None:
        count = flat.numel() if el is None else int(torch.count_nonzero(el))
    if k >= count:
        return (torch.ones_like(flat, dtype=torch.bool) if el is None else el.clone()).view(score.shape)
    if k <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    threshold = kth_largest(flat, k, el, count)
    keep = flat >= threshold
    if el is not None:
        keep &= el
    if int(torch.count_nonzero(keep)) > k:  # ties at the threshold: the lower indices win
        tied = flat == threshold
        keep = flat > threshold
        if el is not None:
            keep &= el
            tied &= el
        keep |= tied & (torch.cumsum(tied, 0) <= k - int(torch.count_nonzero(keep)))
    return keep.view(score.shape)


def keep_above_kth(score: Tensor, k: int, strict: bool = True) -> Tensor:
    """GraNet's reference rule: keep ``score > t`` (or ``>= t``) where ``t`` is the ``k``-th largest."""
    flat = score.detach().reshape(-1).float()
    if k <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    t = kth_largest(flat, min(k, flat.numel()))
    return (flat > t if strict else flat >= t).view(score.shape)



def order_keys(scores: Tensor, tie_break: Tensor, nonnegative: bool = False) -> Tensor:
    """Unique int64 keys ordered like ``scores`` (float32), ties ranked by ``tie_break`` (larger first)."""
    bits = (scores.detach().to(torch.float32) + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    if not nonnegative:  # negative floats order backwards in their bit patterns
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(torch.int64).bitwise_left_shift_(32).bitwise_or_(tie_break)


def kth_smallest(keys: Tensor, k: int) -> Tensor | int:
    """The ``k``-th smallest (1-based) entry of a 1-D int64 tensor."""
    if keys.device.type == "cpu":
        return int(np.partition(keys.numpy(), k - 1)[k - 1])
    return torch.kthvalue(keys, k).values


class SegmentTopK:
    """Keep-masks for consecutive segments of a flat vector, written into one reusable bool buffer.

    The key buffers are allocated once: a loop that selects every round (SynFlow, DPaI) pays for no
    fresh multi-megabyte tensors per round.
    """

    def __init__(self, sizes: Sequence[int], device: torch.device | str, out: Tensor | None = None):
        self.sizes = [int(s) for s in sizes]
        total = sum(self.sizes)
        self.buf = torch.empty(total, dtype=torch.bool, device=device) if out is None else out
        self.outs = self.buf.split(self.sizes)
        self.tie_break = torch.arange(total - 1, -1, -1, device=device, dtype=torch.int64)
        self._keys = torch.empty(total, dtype=torch.int64, device=device)
        self._high = torch.empty(total, dtype=torch.int32, device=device)

    def _nonnegative_keys(self, scores: Tensor, active: Tensor | None) -> Tensor:
        """:func:`order_keys` for scores >= 0, into the preallocated buffer. With ``active``, an active key
        is ``(bits + 1) << 32 | tie`` and an inactive one its tie-break alone, so every key stays unique (a
        block of equal keys sends introselect quadratic: 5 ms instead of 0.2 at 90 % inactive)."""
        bits = scores.detach().to(torch.float32).contiguous().view(torch.int32)
        high = torch.clamp(bits, min=0, out=self._high)  # -0.0 is the sign bit alone: it becomes +0.0
        if active is not None:
            high.add_(1).mul_(active)  # an int32 * bool product is ~10x faster than masked_fill_
        # tie | high << 32 in one pass (the tie-break is < 2**32, so the sum is the bitwise or)
        return torch.add(self.tie_break, high, alpha=1 << 32, out=self._keys)

    def __call__(self, scores: Tensor, keep: Sequence[int], nonnegative: bool = False,
                 active: Tensor | None = None) -> Tensor:
        """``keep[i]`` largest entries of segment ``i`` of ``scores``; returns the (shared) buffer.

        ``active`` (bool, like ``scores``): inactive entries rank below every active one, as if their
        score were ``-inf`` (iterative pruning never revives a removed weight). It may be the buffer
        returned by the previous call: it is read before the buffer is written.
        """
        if scores.dtype == torch.float64 or (active is not None and not nonnegative):
            if active is not None:  # the generic exact selection (float64 has no spare bits for the index)
                scores = scores.masked_fill(~active, -torch.inf)
            if scores.dtype == torch.float64:
                for part, out, k in zip(scores.split(self.sizes), self.outs, keep):
                    topk_mask(part, max(0, min(int(k), part.numel())), out=out)
                return self.buf
        if nonnegative:
            keys = self._nonnegative_keys(scores, active)
        else:
            keys = order_keys(scores, self.tie_break)
        for part, out, size, k in zip(keys.split(self.sizes), self.outs, self.sizes, keep):
            if k >= size:
                out.fill_(True)
            elif k <= 0:
                out.fill_(False)
            else:
                torch.gt(part, kth_smallest(part, size - k), out=out)
        return self.buf


class WarmTopK:
    """Exact global top-k that reuses the last threshold: the mask equals ``topk_mask(a, k)`` (the ``k``
    largest, ties by lower index). Scores move little per step, so the (k+1)-th largest value (the
    threshold) usually stays inside a narrow band around the previous one: one pass counts the values
    above the band and the selection runs on the few inside it. A miss widens the band and falls back to
    the full O(n) selection. Needs host synchronisation, so :class:`ScoreBank` uses it on the CPU only,
    where the full selection costs several SGD steps of a small MLP."""

    def __init__(self, k: int):
        self.k = k
        self.threshold: float | None = None
        self.width = 1e-2  # relative half-width of the band

    @torch.no_grad()
    def __call__(self, a: Tensor, out: Tensor) -> Tensor:
        n, k = a.numel(), self.k
        if self.threshold is not None and 0 < k < n:
            lo, hi = self.threshold * (1 - self.width), self.threshold * (1 + self.width)
            above = a > hi
            band = a[torch.logical_xor(a >= lo, above)]
            rank = k - int(torch.count_nonzero(above)) + 1  # of the threshold, from the top, inside the band
            if 1 <= rank <= band.numel():
                threshold = torch.kthvalue(band, band.numel() - rank + 1).values
                torch.gt(a, threshold, out=out)
                need = k - int(torch.count_nonzero(out))
                if need > 0:  # ties at the threshold: the lower indices first
                    tied = a == threshold
                    out |= tied & (torch.cumsum(tied, 0) <= need)
                self.threshold = float(threshold)
                if band.numel() > n // 16:
                    self.width /= 2
                return out
            self.width = min(1.0, self.width * 4)
        topk_mask(a, k, out=out)
        self.threshold = float(a[~out].max()) if 0 < k < n else None
        return out
