"""Exact top-k over segments of one flat score vector, for the loops of the iterative PaI methods.

Same selection as :func:`prunekit.sparsity.topk_mask` (keep the ``k`` largest, ties: the lower index is
kept), organised for a loop that selects again every step: the scores are turned into unique int64 keys
``(order-preserving bits of the float32 score) << 32 | (N - 1 - index)``, so a single threshold per segment
splits it exactly and no tie pass is needed (float64 scores take the generic path), and on the CPU the threshold comes from NumPy's introselect
(``np.partition``), about ten times faster than ``torch.kthvalue`` there. Scores must not be NaN; -0.0 and
+0.0 count as equal.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..sparsity import topk_mask


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

    def __init__(self, sizes: Sequence[int], device: torch.device | str):
        self.sizes = [int(s) for s in sizes]
        total = sum(self.sizes)
        self.buf = torch.empty(total, dtype=torch.bool, device=device)
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
