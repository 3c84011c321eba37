"""Channel (filter) pruning that the compact export can remove: ``structured``.

Any per-weight scorer, aggregated per channel over the output filters that write it (Li et al.,
"Pruning Filters for Efficient ConvNets", ICLR 2017: L1 norm of the filter; L2; first-order Taylor
``|w * dL/dw|``, Molchanov et al., ICLR 2017; SNIP/GraSP/SynFlow scores; or scores learned by
BiP/HYDRA, passed to :meth:`StructuredPruner.prune_scores`). Channels are chosen per *dependency group*
(Fang et al., DepGraph, CVPR 2023): a residual stream's channel is kept or removed in every layer
that writes it, so every pruned channel physically disappears in
:func:`prunekit.export.compact_model`.

``sparsity`` here is the fraction of *channels* removed (per group for ``allocation="uniform"``, over
all eligible channels for ``"global"``, with scores normalised by their group mean as Torch-Pruning's
``normalizer="mean"``); the weight sparsity that results is ``masks.sparsity()``. ``round_to`` keeps
every pruned width a multiple of that number (8 suits SIMD and tensor cores). A removed channel masks
the producers' output rows and the readers' input columns, and its BatchNorm scale/shift and the
producers' biases are held at zero on every :meth:`enforce` (the channel-masked model of
:mod:`prunekit.export.compact`), so the masked model is exactly the compact one.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from typing import Any, Literal, Mapping

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from ..errors import ConfigError, MaskError, ModelError
from ..modelio import batch_to, hf_conv1d_type, slice_batch
from ..scoring import SCORERS, snip_scores
from ..scoring.data import take_samples
from ..sparsity import MaskSet, keep_counts, topk_mask
from ..sparsity.targets import resolve_targets
from ..structure.graph import CONSUMER, DEPTHWISE, NORM, PRODUCER, ChannelGather, ChannelGraph, clear_entries_, member_entries
from ..structure.heads import check_mha_prunable, find_attention, unit_scores
from .base import Allocation, MethodConfig, PruneContext, Pruner
from .basic import MagnitudePruning
from .registry import METHODS

OWN_SCORERS = ("taylor",)


class StructuredConfig(MethodConfig):
    scorer: str = Field("magnitude", description="per-weight score aggregated per channel: 'taylor' (|w dL/dw|) "
                        "or a prunekit.scoring.SCORERS name")
    reduce: Literal["l1", "l2"] = Field("l1", description="how a channel's scores are summed: L1, or L2 norm")
    allocations = ("uniform", "global")

    allocation: Allocation = Field("uniform", description="how the sparsity is spread over the channel groups: "
                                   "the same fraction of each (uniform) or one threshold over the groups' "
                                   "mean-normalised scores (global)")
    round_to: int = Field(1, description="every pruned width is a multiple of this (8 suits SIMD and tensor "
                          "cores)")
    prune_coupled: bool = Field(True, description="also prune groups written by several layers (residual "
                                "streams)")
    when: Literal["init", "after"] = Field("after", description="prune before training, or after dense "
                                           "pretraining followed by fine-tuning")
    input_shape: tuple[int, ...] | None = Field(None, description="shape of one input for tracing the channel "
                                                "groups; None: taken from ctx.batches")

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        allowed = (*OWN_SCORERS, *SCORERS)
        if v not in allowed:
            raise ValueError(f"allowed: {', '.join(allowed)}")
        return v

    @field_validator("round_to")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("allowed: an integer >= 1")
        return v


def _takes_tokens(model: nn.Module) -> bool:
    """Whether the first layer with parameters is an embedding (the model reads token ids)."""
    first = next((m for m in model.modules() if any(True for _ in m.parameters(recurse=False))), None)
    return isinstance(first, nn.Embedding)


def _reason(g) -> str:
    if g.reaches_output:
        return "reaches the model output"
    if g.unsupported:
        return f"holds {g.unsupported}, which cannot lose channels exactly"
    return "is pruned in whole heads"


def rounded_keep(n: int, keep: int, round_to: int) -> int:
    """``keep`` of ``n`` channels rounded to the nearest multiple of ``round_to`` (at least one
    multiple, at most ``n``; at least 1)."""
    if round_to > 1 and n > round_to:
        keep = max(round_to, int(math.floor(keep / round_to + 0.5)) * round_to)
    return max(1, min(n, keep))


@METHODS.register("structured", family="structured", unit="channel")
class StructuredPruner(Pruner):
    """Dependency-aware channel pruning (module docstring); call :meth:`prune` (or ``on_init`` with
    ``when="init"``), fine-tune with the usual hooks, export with ``prunekit.export.compact_model``."""

    Config = StructuredConfig
    name = "structured"
    config: StructuredConfig

    def __init__(self, model, config: StructuredConfig):
        super().__init__(model, config)
        self._add_packed_projections()
        self.side_masks: dict[str, Tensor] = {}  # biases and BN scale/shift of removed channels

    # like magnitude pruning: ``when`` picks pruning at initialization or after pretraining
    @classmethod
    def schedule_for(cls, config: StructuredConfig) -> str:
        return config.when

    on_init = MagnitudePruning.on_init

    def _add_packed_projections(self) -> None:
        """Also mask Hugging Face ``Conv1D`` weights and ``nn.MultiheadAttention.in_proj_weight`` (they
        hold GPT-2's and MHA's heads) when the targets policy covers linear layers but not them."""
        targets = resolve_targets(self.config.targets)
        if targets.layers == "conv":
            return
        c1d = hf_conv1d_type()
        extra = set()
        for name, m in self.model.named_modules():
            if c1d is not None and isinstance(m, c1d):
                extra.add(f"{name}.weight")
            elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
                extra.add(f"{name}.in_proj_weight")
        extra = {n for n in extra - set(self.masks.names())
                 if (not targets.include or any(fnmatch.fnmatchcase(n, g) for g in targets.include))
                 and not any(fnmatch.fnmatchcase(n, g) for g in targets.exclude)}
        if extra:
            old = dict(self.masks.items())
            self.masks = MaskSet({n: old[n] if n in old else torch.ones_like(p, dtype=torch.bool)
                                  for n, p in self.model.named_parameters() if n in old or n in extra}).bind(self.model)

    # --- scoring ---------------------------------------------------------------------------------
    def _example(self, ctx: PruneContext | None):
        device = self.masks.params[0].device
        if self.config.input_shape is not None:
            tokens = _takes_tokens(self.model)  # token ids: zeros are valid ids of every vocabulary
            return torch.zeros((2, *self.config.input_shape), device=device, dtype=torch.long if tokens else None)
        if ctx is not None and ctx.batches is not None:
            for x, _ in ctx.batches:
                return batch_to(slice_batch(x, 2), device)
        raise ConfigError("structured: tracing the channel groups needs method.input_shape or ctx.batches")

    def _scores(self, ctx: PruneContext | None) -> dict[str, Tensor]:
        name = self.config.scorer
        if name == "taylor":
            if ctx is None:
                raise ConfigError("structured: scorer 'taylor' needs data (ctx.batches)")
            data = take_samples(ctx.batches, 100, self.masks.params[0].device, "structured taylor")
            return snip_scores(self.model, self.masks, data, ctx.loss_fn, normalize=False)
        return SCORERS[name](self.model, self.masks, ctx or PruneContext())

    def prune(self, ctx: PruneContext | None = None):
        return self.prune_scores(self._scores(ctx), ctx)

    # --- selection -------------------------------------------------------------------------------
    def _eligible(self, graph) -> list:
        out = []
        for g in graph.prunable_groups():
            producers = g.producers()
            weighted = [m for m in producers if hasattr(m.module, "weight")]
            if not weighted or any(f"{m.name}.weight" not in self.masks for m in weighted):
                continue
            if not self.config.prune_coupled and len(producers) > 1:
                continue
            out.append(g)
        return out

    def _eligible_heads(self, graph) -> list:
        return [a for a in graph.attention if all(s.param in self.masks for s in a.weights())]

    def _unit_scores(self, group, scores: Mapping[str, Tensor]) -> Tensor:
        """Per unit of ``group`` (a channel, or a position of every conv group): its producers' scores."""
        total = torch.zeros(group.size, dtype=torch.float64)
        for m in group.producers():
            s = scores.get(f"{m.name}.weight")
            if s is None:
                continue
            rows = member_entries(m, s.detach().abs().double().cpu())
            agg = rows.sum(1) if self.config.reduce == "l1" else rows.pow(2).sum(1)
            total.index_add_(0, torch.tensor(m.root, dtype=torch.long), agg)
        if group.period:
            total = torch.zeros(group.units, dtype=torch.float64).index_add_(0, group.unit_of(), total)
        return total if self.config.reduce == "l1" else total.sqrt()

    def _keep_counts(self, units: list[int], unit_scores: list[Tensor], roundable: list[bool]) -> list[int]:
        cfg = self.config
        groups = [str(i) for i in range(len(units))]
        # a global threshold compares groups by their scores relative to the group's mean
        normed = {g: s / s.mean().clamp_min(1e-300) for g, s in zip(groups, unit_scores)}
        keep = keep_counts({g: (n,) for g, n in zip(groups, units)}, self.target_sparsity(), cfg.allocation,
                           scores=normed)
        keep = list(keep.values())
        return [rounded_keep(n, k, cfg.round_to if r else 1) for n, k, r in zip(units, keep, roundable)]

    def _select(self, group, scores: Tensor, keep: int, gather_removed: dict[int, set[int]]) -> Tensor:
        """Top-``keep`` channels of ``group``; a channel an option-A shortcut copies from a kept input
        channel is always kept (removing it would not be exact)."""
        forced = torch.zeros(group.size, dtype=torch.bool)
        for m in group.producers():
            if isinstance(m.module, ChannelGather):
                gone = gather_removed.get(id(m.module), set())
                src = m.module.gather.cpu()[m.idxs].tolist()
                live = [s != m.module.in_channels and s not in gone for s in src]
                forced[torch.tensor(m.root, dtype=torch.long)[torch.tensor(live, dtype=torch.bool)]] = True
        n_forced = int(forced.sum())
        if n_forced > keep:
            keep = min(group.size, -(-n_forced // self.config.round_to) * self.config.round_to)
        return topk_mask(scores.masked_fill(forced, math.inf), keep)

    @torch.no_grad()
    def prune_scores(self, scores: Mapping[str, Tensor], ctx: PruneContext | None = None):
        """Masks from per-weight ``scores`` (``{weight name: tensor}``, e.g. a HYDRA/BiP pruner's
        ``dict(zip(bank.names, bank.scores_v))``), aggregated per channel (per head in attention) and
        chosen per group. Raises :class:`ModelError` when nothing can be removed."""
        for a in find_attention(self.model):  # (before tracing: such layouts can break the tracer)
            check_mha_prunable(a)  # an MHA layout whose heads cannot be removed exactly: refuse, never skip
        graph = ChannelGraph(copy.deepcopy(self.model), self._example(ctx))
        groups, attention = self._eligible(graph), self._eligible_heads(graph)
        per_unit = [self._unit_scores(g, scores) for g in groups] + [unit_scores(a, scores, self.config.reduce)
                                                                       for a in attention]
        units = [g.units for g in groups] + [a.units for a in attention]
        roundable = [g.period is None for g in groups] + [False] * len(attention)
        keeps = self._keep_counts(units, per_unit, roundable)
        new = {n: torch.ones_like(m) for n, m in self.masks.items()}
        side: dict[str, Tensor] = {}
        params = dict(self.model.named_parameters())
        removed_any = False
        gather_removed: dict[int, set[int]] = {}  # ChannelGather -> its removed input channels
        for g, s, k in zip(groups, per_unit, keeps):
            if g.period:
                removed = ~topk_mask(s, k)[g.unit_of()]
            else:
                removed = ~self._select(g, s, k, gather_removed)
            removed_any |= bool(removed.any())
            self._mask_channels(g, removed, new, side, params, gather_removed)
        for a, s, k in zip(attention, per_unit[len(groups):], keeps[len(groups):]):
            gone = (~topk_mask(s, k)).nonzero().flatten().tolist()
            removed_any |= bool(gone)
            for slot in a.slots:  # weights in the masks; biases held at zero like the channels' biases
                keep = new[slot.param] if slot.param in new else side.setdefault(
                    slot.param, torch.ones_like(params[slot.param], dtype=torch.bool))
                keep.movedim(slot.axis, 0)[a.indices(slot, gone).to(keep.device)] = False
        if not removed_any:
            raise ModelError(self._nothing_removed(graph, groups, attention))
        self.masks.update_(new)
        self.side_masks = side
        self._side_factors = None
        self.enforce()
        return self.masks

    def _mask_channels(self, g, removed: Tensor, new, side, params, gather_removed) -> None:
        for m in g.members:
            sel = removed[torch.tensor(m.root, dtype=torch.long)]
            idxs = torch.tensor(m.idxs, dtype=torch.long)[sel]
            if not len(idxs):
                continue
            weight = f"{m.name}.weight"
            if m.role == CONSUMER:
                if isinstance(m.module, ChannelGather):
                    gather_removed.setdefault(id(m.module), set()).update(idxs.tolist())
                if weight in new:
                    clear_entries_(m, new[weight], idxs.tolist())
                continue
            if m.role in (PRODUCER, DEPTHWISE) and weight in new:
                clear_entries_(m, new[weight], idxs.tolist())
            for attr in ("weight", "bias") if m.role == NORM else ("bias",):
                pname = f"{m.name}.{attr}"
                if pname in params:
                    keep = side.setdefault(pname, torch.ones_like(params[pname], dtype=torch.bool))
                    keep[idxs.to(keep.device)] = False

    def _nothing_removed(self, graph, groups, attention) -> str:
        sp = self.target_sparsity()
        if groups or attention:
            return (f"structured: sparsity={sp:g} removes no channel or head of {type(self.model).__name__} "
                    "(every eligible group keeps all its units); raise the sparsity")
        why = next((f"'{g.root_name}' {_reason(g)}" for g in graph.groups if not g.prunable), None)
        return (f"structured: {type(self.model).__name__} has no channel group or attention head that can be "
                f"removed" + (f" (e.g. group of {why})" if why else "") + "; see docs/structured.md")

    # --- enforcement and state -------------------------------------------------------------------
    @torch.no_grad()
    def enforce(self) -> None:
        super().enforce()
        if self.side_masks:
            if getattr(self, "_side_factors", None) is None:
                params = dict(self.model.named_parameters())
                self._side_params = [params[n] for n in self.side_masks]
                self._side_factors = [m.to(p.dtype) for m, p in zip(self.side_masks.values(), self._side_params)]
            torch._foreach_mul_(self._side_params, self._side_factors)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["side_masks"] = {n: m.clone() for n, m in self.side_masks.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        params = dict(self.model.named_parameters())
        side = state.get("side_masks", {})
        bad = [n for n, m in side.items() if n not in params or params[n].shape != m.shape]
        if bad:
            raise MaskError(f"structured: state side mask {bad[0]!r} names no parameter of that shape")
        self.side_masks = {n: m.to(params[n].device, torch.bool) for n, m in side.items()}
        self._side_factors = None
