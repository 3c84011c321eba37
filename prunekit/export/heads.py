"""The surgery that removes whole attention heads (the units of :mod:`prunekit.structure.heads`).

Removing a head is exact when its value rows (and biases) are zero, so its output is zero, or its
output-projection columns are: the compact model then has fewer heads of the same ``head_dim`` and
computes what the masked model computes (the ``1/sqrt(head_dim)`` scale is unchanged). Channels *inside*
heads are never regrouped: keeping a pattern like ``[3, 11, 10, 8]`` of 16 rows per head and packing the
survivors into fewer heads computes a different model. ``nn.MultiheadAttention`` cannot hold fewer heads
than ``embed_dim // head_dim`` and is replaced by :class:`HeadPrunedMultiheadAttention`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError
from ..structure.heads import AttentionHeads, Slot, check_mha_prunable


@torch.no_grad()
def zero_dead_biases_(heads: AttentionHeads, model: nn.Module, masks) -> None:
    """Set to zero the q/k/v biases of fully masked projection rows (the channel-masked model)."""
    params = dict(model.named_parameters())
    for b in (s for s in heads.slots if s.bias):
        w = next(s for s in heads.weights() if s.part == b.part)
        if w.param not in masks:
            continue
        m = masks[w.param]
        rows = ~m.movedim(w.axis, 0).reshape(m.shape[w.axis], -1).any(1)
        params[b.param].data[rows.to(params[b.param].device)] = 0


def _slice_param_(model: nn.Module, name: str, axis: int, drop: Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    p = getattr(owner, attr)
    keep = torch.ones(p.shape[axis], dtype=torch.bool)
    keep[drop] = False
    idx = keep.nonzero().flatten().to(p.device)
    setattr(owner, attr, nn.Parameter(p.data.index_select(axis, idx).clone(), requires_grad=p.requires_grad))


def _fix_feature_counts(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif hasattr(module, "nf") and hasattr(module, "nx"):  # Conv1D
        module.nx, module.nf = module.weight.shape


@torch.no_grad()
def remove_units_(model: nn.Module, heads: AttentionHeads, units: list[int]) -> None:
    """Physically remove ``units`` of ``heads`` from ``model`` (in place)."""
    if not units:
        return
    if heads.units - len(units) < 1:
        raise ModelError(f"{heads.name}: removing all {heads.units} heads leaves no attention")
    if heads.kind == "mha":
        parent_name, _, attr = heads.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, HeadPrunedMultiheadAttention.from_mha(model.get_submodule(heads.name), heads, units))
        return
    drops: dict[tuple[str, int], list[Tensor]] = {}  # packed q/k/v: one slice per parameter
    for slot in heads.slots:
        drops.setdefault((slot.param, slot.axis), []).append(heads.indices(slot, units))
    for (param, axis), idx in drops.items():
        _slice_param_(model, param, axis, torch.cat(idx))
    for mod in {s.param.rpartition(".")[0] for s in heads.slots}:
        _fix_feature_counts(model.get_submodule(mod))
    left = heads.units - len(units)
    heads.set_heads(model.get_submodule(heads.name), left * heads.num_heads // heads.num_kv_heads, left)


class HeadPrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with some heads removed: ``embed_dim`` in and out, ``num_heads`` kept
    heads of the original ``head_dim`` (so ``num_heads * head_dim < embed_dim``, which
    ``nn.MultiheadAttention`` cannot represent). The state keys are the original ones
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``). Attention weights, when asked for, are those
    of the original module: removed heads attend uniformly over the allowed keys (their scores are zero).
    """

    _qkv_same_embed_dim = False  # keeps nn.TransformerEncoderLayer off its fused path, which needs the original

    def __init__(self, embed_dim: int, kept: list[int], orig_heads: int, head_dim: int, bias: bool, dropout: float,
                 batch_first: bool):
        super().__init__()
        self.embed_dim, self.head_dim, self.orig_heads = embed_dim, head_dim, orig_heads
        self.num_heads = len(kept)
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.long), persistent=False)
        self.dropout, self.batch_first = dropout, batch_first
        inner = self.num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=True)

    @classmethod
    @torch.no_grad()
    def from_mha(cls, m: nn.MultiheadAttention, heads: AttentionHeads, removed: list[int]) -> "HeadPrunedMultiheadAttention":
        check_mha_prunable(heads)
        kept = [h for h in range(heads.num_heads) if h not in set(removed)]
        new = cls(m.embed_dim, kept, heads.num_heads, heads.head_dim, m.in_proj_bias is not None, m.dropout,
                  m.batch_first).to(m.in_proj_weight.device, m.in_proj_weight.dtype)
        rows = torch.cat([heads.indices(Slot("", 0, "q", i * m.embed_dim), kept) for i in range(3)])
        new.in_proj_weight.copy_(m.in_proj_weight[rows])
        if m.in_proj_bias is not None:
            new.in_proj_bias.copy_(m.in_proj_bias[rows])
        new.out_proj.weight.copy_(m.out_proj.weight[:, heads.indices(Slot("", 1, "out"), kept)])
        if m.out_proj.bias is not None:
            new.out_proj.bias.copy_(m.out_proj.bias)
        else:
            new.out_proj.bias = None
        return new.train(m.training)

    def _mask(self, attn_mask, key_padding_mask, is_causal, b, lq, lk, dtype, device) -> Tensor | None:
        """The additive mask ``[b, orig_heads or 1, lq, lk]`` of nn.MultiheadAttention's arguments."""
        total = None

        def add(m):
            nonlocal total
            m = torch.zeros_like(m, dtype=dtype).masked_fill(m, -math.inf) if m.dtype == torch.bool else m.to(dtype)
            total = m if total is None else total + m

        if attn_mask is None and is_causal:
            attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=device).triu(1)
        if attn_mask is not None:
            add(attn_mask.view(b, self.orig_heads, lq, lk) if attn_mask.dim() == 3 else attn_mask.view(1, 1, lq, lk))
        if key_padding_mask is not None:
            add(key_padding_mask.view(b, 1, 1, lk))
        return total

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, lk, h, d = query.shape[0], query.shape[1], key.shape[1], self.num_heads, self.head_dim
        w = self.in_proj_weight.chunk(3)
        bias = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(t, wi, bi).view(b, -1, h, d).transpose(1, 2)
                   for t, wi, bi in zip((query, key, value), w, bias))
        mask = self._mask(attn_mask, key_padding_mask, is_causal, b, lq, lk, q.dtype, q.device)
        kept_mask = mask[:, self.kept] if mask is not None and mask.shape[1] > 1 else mask
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=kept_mask, dropout_p=p)
        out = self.out_proj(y.transpose(1, 2).reshape(b, lq, h * d))
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            scores = torch.zeros(b, self.orig_heads, lq, lk, dtype=q.dtype, device=q.device)
            scores[:, self.kept] = q @ k.transpose(-1, -2) / math.sqrt(d)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights.squeeze(0) if unbatched else weights
        return (out.squeeze(1 if not self.batch_first else 0) if unbatched else out), weights
