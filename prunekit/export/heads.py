"""Attention heads as structured units: which weight rows and columns make one head, and the surgery
that removes whole heads.

A head ``h`` of multi-head attention (Vaswani et al., NeurIPS 2017) owns ``head_dim`` consecutive rows of
the query, key and value projections and the same columns of the output projection. Removing it is exact
when its value rows (and biases) are zero, so its output is zero, or its output-projection columns are:
the compact model then has fewer heads of the same ``head_dim`` and computes what the masked model
computes (the ``1/sqrt(head_dim)`` scale is unchanged). Channels *inside* heads are never regrouped:
keeping a pattern like ``[3, 11, 10, 8]`` of 16 rows per head and packing the survivors into fewer heads
computes a different model. With grouped-query attention (Ainslie et al., EMNLP 2023) the unit is a
key/value head together with the query heads that share it.

Supported layouts, found by type: separate ``nn.Linear`` q/k/v/out projections (Hugging Face BERT's
``BertSelfAttention`` + ``BertSelfOutput.dense``, the zoo's ViT ``SelfAttention``, Llama-style
``q_proj/k_proj/v_proj/o_proj`` with key/value groups), GPT-2's packed ``Conv1D`` ``c_attn`` (weight
``[in, out]``) and ``c_proj``, and ``nn.MultiheadAttention`` (packed ``in_proj_weight``), which cannot
hold fewer heads than ``embed_dim // head_dim`` and is replaced by :class:`HeadPrunedMultiheadAttention`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError


def conv1d_type() -> type | None:
    """Hugging Face's ``Conv1D`` (weight ``[in, out]``) when transformers is loaded, else ``None``."""
    mod = sys.modules.get("transformers.pytorch_utils")
    if mod is None and "transformers" in sys.modules:
        try:
            import transformers.pytorch_utils as mod
        except ImportError:  # pragma: no cover
            return None
    return getattr(mod, "Conv1D", None)


def out_axis(module: nn.Module) -> int:
    """The weight axis of a layer's output features (1 for ``Conv1D``, 0 for conv/linear)."""
    c1d = conv1d_type()
    return 1 if c1d is not None and isinstance(module, c1d) else 0


@dataclass
class Slot:
    """A parameter that loses indices ``offset + unit indices`` along ``axis`` when a unit goes;
    ``part`` is ``q``, ``k``, ``v`` (projection rows and their biases) or ``out`` (output columns)."""

    param: str
    axis: int
    part: str
    offset: int = 0
    bias: bool = False


@dataclass
class AttentionHeads:
    """One attention module's heads: ``units`` = key/value heads (= heads without GQA), each with
    ``num_heads // num_kv_heads`` query heads of ``head_dim`` channels."""

    name: str
    module: nn.Module
    kind: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    slots: list[Slot] = field(default_factory=list)
    set_heads: Callable[[nn.Module, int, int], None] | None = None  # (module, heads, kv heads) -> attrs

    @property
    def units(self) -> int:
        return self.num_kv_heads

    def indices(self, slot: Slot, units) -> Tensor:
        """Indices of ``slot`` that belong to ``units``."""
        per = self.num_heads // self.num_kv_heads if slot.part in ("q", "out") else 1
        width = per * self.head_dim
        units = torch.as_tensor(list(units), dtype=torch.long)
        base = (units[:, None] * width + torch.arange(width)[None, :]).flatten()
        return base + slot.offset

    def weights(self) -> list[Slot]:
        return [s for s in self.slots if not s.bias]

    def projections(self) -> list[str]:
        """Module names whose output features carry the heads (q/k/v projections)."""
        return sorted({s.param.rpartition(".")[0] for s in self.weights() if s.part != "out"})


def _along(t: Tensor, axis: int, idx: Tensor) -> Tensor:
    return t.movedim(axis, 0)[idx.to(t.device)]


def unit_scores(heads: AttentionHeads, scores: dict, reduce: str) -> Tensor:
    """Per unit: the L1 (or squared-L2 summed, then rooted) score of its q/k/v rows."""
    total = torch.zeros(heads.units, dtype=torch.float64)
    for slot in heads.weights():
        s = scores.get(slot.param)
        if s is None or slot.part == "out":
            continue
        for u in range(heads.units):
            rows = _along(s.detach().abs().double().cpu(), slot.axis, heads.indices(slot, [u]))
            total[u] += rows.sum() if reduce == "l1" else rows.pow(2).sum()
    return total if reduce == "l1" else total.sqrt()


def dead_units(heads: AttentionHeads, masks) -> Tensor:
    """Per unit: removable (its value rows or its output columns fully masked)."""
    dead = torch.zeros(heads.units, dtype=torch.bool)
    for u in range(heads.units):
        for part in ("v", "out"):
            slots = [s for s in heads.weights() if s.part == part and s.param in masks]
            if slots and all(not bool(_along(masks[s.param], s.axis, heads.indices(s, [u])).any()) for s in slots):
                dead[u] = True
    return dead


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


# --- finding attention modules -------------------------------------------------------------------------


def _linear_slots(q: str, k: str, v: str, out: str, modules: dict) -> list[Slot]:
    slots = []
    for part, name in (("q", q), ("k", k), ("v", v)):
        slots.append(Slot(f"{name}.weight", 0, part))
        if modules[name].bias is not None:
            slots.append(Slot(f"{name}.bias", 0, part, bias=True))
    slots.append(Slot(f"{out}.weight", 1, "out"))
    return slots


def _set_bert_heads(m: nn.Module, heads: int, kv: int) -> None:
    m.num_attention_heads, m.all_head_size = heads, heads * m.attention_head_size


def _set_gpt2_heads(m: nn.Module, heads: int, kv: int) -> None:
    m.num_heads, m.split_size = heads, heads * m.head_dim


def _bert(name: str, m: nn.Module, modules: dict) -> AttentionHeads | None:
    parent = modules.get(name.rpartition(".")[0])
    out = getattr(getattr(parent, "output", None), "dense", None)
    if not isinstance(out, nn.Linear) or getattr(parent, "self", None) is not m:
        return None
    out_name = next(n for n, mm in modules.items() if mm is out)
    slots = _linear_slots(f"{name}.query", f"{name}.key", f"{name}.value", out_name, modules)
    return AttentionHeads(name, m, "bert", m.num_attention_heads, m.num_attention_heads, m.attention_head_size, slots,
                          _set_bert_heads)


def _zoo_vit(name: str, m: nn.Module, modules: dict) -> AttentionHeads:
    slots = _linear_slots(f"{name}.q", f"{name}.k", f"{name}.v", f"{name}.out", modules)
    return AttentionHeads(name, m, "vit", m.heads, m.heads, m.q.out_features // m.heads, slots,
                          lambda mod, h, kv: setattr(mod, "heads", h))


def _llama(name: str, m: nn.Module, modules: dict) -> AttentionHeads:
    hd = m.head_dim
    heads, kv = m.q_proj.out_features // hd, m.k_proj.out_features // hd
    slots = _linear_slots(f"{name}.q_proj", f"{name}.k_proj", f"{name}.v_proj", f"{name}.o_proj", modules)
    return AttentionHeads(name, m, "llama", heads, kv, hd, slots, lambda mod, h, k: None)  # shapes are inferred


def _gpt2(name: str, m: nn.Module, modules: dict) -> AttentionHeads:
    if getattr(m, "is_cross_attention", False):
        raise ModelError(f"{name}: head pruning of GPT-2 cross-attention (q_attn) is not supported")
    split = m.split_size
    slots = [Slot(f"{name}.c_attn.weight", 1, p, i * split) for i, p in enumerate("qkv")]
    slots += [Slot(f"{name}.c_attn.bias", 0, p, i * split, bias=True) for i, p in enumerate("qkv")]
    slots.append(Slot(f"{name}.c_proj.weight", 0, "out"))
    return AttentionHeads(name, m, "gpt2", m.num_heads, m.num_heads, m.head_dim, slots,
                          _set_gpt2_heads)


def _mha(name: str, m: nn.MultiheadAttention, modules: dict) -> AttentionHeads:
    e = m.embed_dim
    slots = [Slot(f"{name}.in_proj_weight", 0, p, i * e) for i, p in enumerate("qkv")]
    if m.in_proj_bias is not None:
        slots += [Slot(f"{name}.in_proj_bias", 0, p, i * e, bias=True) for i, p in enumerate("qkv")]
    slots.append(Slot(f"{name}.out_proj.weight", 1, "out"))
    return AttentionHeads(name, m, "mha", m.num_heads, m.num_heads, m.head_dim, slots)


def _kind(m: nn.Module) -> Callable | None:
    from ..models.vit import SelfAttention

    c1d = conv1d_type()
    if isinstance(m, nn.MultiheadAttention):
        return _mha
    if isinstance(m, SelfAttention):
        return _zoo_vit
    if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")) and \
            hasattr(m, "num_attention_heads") and hasattr(m, "attention_head_size"):
        return _bert
    if c1d is not None and isinstance(getattr(m, "c_attn", None), c1d) and hasattr(m, "split_size"):
        return _gpt2
    if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) and \
            hasattr(m, "head_dim"):
        return _llama
    return None


def find_attention(model: nn.Module) -> list[AttentionHeads]:
    """Every attention module of ``model`` in a supported layout (module docstring), in module order."""
    modules = dict(model.named_modules())
    out = []
    for name, m in modules.items():
        kind = _kind(m)
        heads = kind(name, m, modules) if kind is not None else None
        if heads is not None:
            out.append(heads)
    return out


def check_mha_prunable(heads: AttentionHeads) -> None:
    m = heads.module
    if heads.kind != "mha":
        return
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise ModelError(f"{heads.name}: head pruning of nn.MultiheadAttention needs kdim = vdim = embed_dim, "
                         "no bias_k/bias_v and add_zero_attn=False")


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
