"""Attention heads as structured units: which weight rows and columns make one head.

A head ``h`` of multi-head attention (Vaswani et al., NeurIPS 2017) owns ``head_dim`` consecutive rows of
the query, key and value projections and the same columns of the output projection. With grouped-query
attention (Ainslie et al., EMNLP 2023) the unit is a key/value head together with the query heads that
share it. The surgery that removes whole heads is :mod:`prunekit.export.heads`.

Supported layouts, found by type: separate ``nn.Linear`` q/k/v/out projections (Hugging Face BERT's
``BertSelfAttention`` + ``BertSelfOutput.dense``, a module declaring ``structure_kind = "qkv_attention"``
with ``heads`` and ``q/k/v/out`` linear layers such as the zoo's ViT ``SelfAttention``, Llama-style
``q_proj/k_proj/v_proj/o_proj`` with key/value groups), GPT-2's packed ``Conv1D`` ``c_attn`` (weight
``[in, out]``) and ``c_proj``, and ``nn.MultiheadAttention`` (packed ``in_proj_weight``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..modelio import hf_conv1d_type


QKV_ATTENTION = "qkv_attention"  # a module's ``structure_kind``: ``heads`` and q/k/v/out ``nn.Linear`` layers


def out_axis(module: nn.Module) -> int:
    """The weight axis of a layer's output features (1 for ``Conv1D``, 0 for conv/linear)."""
    c1d = hf_conv1d_type()
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
    c1d = hf_conv1d_type()
    if isinstance(m, nn.MultiheadAttention):
        return _mha
    if getattr(m, "structure_kind", None) == QKV_ATTENTION:
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
