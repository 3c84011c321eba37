"""Compact export: turn a channel-masked model into a smaller dense model with the same outputs.

What "channel masked" means. A channel can be removed exactly when either

* every layer that *produces* it (conv/linear output rows; for a residual stream every layer added into
  it) is masked, so with the rule below the channel is exactly zero wherever it is read (ReLU, pooling
  and the residual add keep a zero a zero); or
* every layer that *reads* it (conv/linear input columns) is masked, so its value is never used.

Masks cover conv/linear weights only. A conv-masked channel followed by BatchNorm still emits the BN
shift ``beta - gamma * mean / sqrt(var + eps)``; folding that constant into the next layer's bias is not
exact next to a zero-padded border, so prunekit defines the masked model locally: *masks applied, and
for every fully masked output filter its bias and the scale and shift of the BatchNorm right after it
set to zero* (:func:`zero_masked_channels_`). The ``structured`` method keeps them zero while
fine-tuning, so what it trains is what is exported.

A masked channel coupled to live ones (one block's filter of a residual stream that other blocks still
write) is kept, as zeros; :class:`CompactResult` counts those. Removal itself is Torch-Pruning's
(Fang et al., DepGraph, CVPR 2023), driven by the groups of :mod:`prunekit.structure.graph`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import MaskError
from ..modelio import call_model, logits_of
from ..structure.graph import ChannelGather, ChannelGraph, ChannelGroup, Member, member_entries, weighted_types
from ..structure.heads import dead_units, out_axis
from .heads import remove_units_, zero_dead_biases_


def check_channel_aligned(masks: Mapping[str, Tensor]) -> None:
    """Raise :class:`MaskError` naming the first mask that is not whole output filters / input channels.

    A mask is aligned when ``mask[o, i, ...] == keep_out[o] & keep_in[i]`` for every kernel position.
    """
    for name, m in masks.items():
        if m.dim() < 2:
            raise MaskError(f"{name}: compact export needs conv/linear weight masks (2-D or more), "
                            f"got shape {tuple(m.shape)}")
        flat = m.detach().to(torch.bool).reshape(m.shape[0], m.shape[1], -1)
        rows, cols = flat.any(dim=(1, 2)), flat.any(dim=(0, 2))
        expected = (rows[:, None] & cols[None, :])[:, :, None].expand_as(flat)
        bad = int((flat != expected).sum())
        if bad:
            raise MaskError(
                f"{name}: mask does not remove whole channels ({bad} of {m.numel()} entries differ from "
                "whole output filters x input channels); compact export needs channel-aligned masks "
                "(N:M or unstructured masks: export them with save_pruned instead)")


def _member_dead(member: Member, masks: Mapping[str, Tensor]) -> Tensor:
    """Per index of ``member``: producers ``True`` where the output is always zero, consumers where
    the input is never read (a depthwise conv is both: its filter is its only reader)."""
    mod = member.module
    if isinstance(mod, ChannelGather):
        idxs = torch.tensor(member.idxs, dtype=torch.long)
        if member.role == "producer":
            return mod.gather.cpu()[idxs] == mod.in_channels
        return ~torch.isin(idxs, mod.gather.cpu())
    mask = masks.get(f"{member.name}.weight")
    if mask is None:
        return torch.zeros(len(member.idxs), dtype=torch.bool)
    return ~member_entries(member, mask.detach().cpu()).any(dim=1)


def _all_dead(size: int, members: list[Member], masks: Mapping[str, Tensor]) -> Tensor:
    """Per root channel: every index of every member is dead (vacuously true without members)."""
    alive = torch.zeros(size, dtype=torch.long)
    for m in members:
        alive.index_add_(0, torch.tensor(m.root, dtype=torch.long), (~_member_dead(m, masks)).long())
    return alive == 0


@dataclass
class GroupPlan:
    """What compact export does to one group: ``remove`` (root channels) and ``coupled`` (masked in
    some producer but kept because another producer still writes them)."""

    group: ChannelGroup
    remove: list[int]
    coupled: int


def plan_group(group: ChannelGroup, masks: Mapping[str, Tensor]) -> GroupPlan:
    if not group.prunable:  # (a traced group may map indices it cannot prune, e.g. a packed q/k/v)
        return GroupPlan(group, [], 0)
    producers, consumers = group.producers(), group.consumers()
    producer_dead = _all_dead(group.size, producers, masks)
    consumer_dead = _all_dead(group.size, consumers, masks) if consumers else torch.zeros(group.size, dtype=torch.bool)
    removable = producer_dead | consumer_dead
    if group.period:  # grouped convs: a unit goes only when all its channels can
        unit = group.unit_of()
        live = torch.zeros(group.units, dtype=torch.long).index_add_(0, unit, (~removable).long())
        removable = (live == 0)[unit]
    if bool(removable.all()):  # keep one (dead) unit: a zero-width layer is not a layer
        removable[group.unit_of() == 0] = False
    any_masked = torch.zeros(group.size, dtype=torch.bool)
    for m in producers:
        if isinstance(m.module, ChannelGather):
            continue  # its zero channels are structural, not masked
        any_masked[torch.tensor(m.root, dtype=torch.long)[_member_dead(m, masks)]] = True
    coupled = int((any_masked & ~removable).sum())
    return GroupPlan(group, removable.nonzero().flatten().tolist(), coupled)


@torch.no_grad()
def _zero_masked_outputs_(graph: ChannelGraph, masks: Mapping[str, Tensor], model: nn.Module) -> None:
    """For every conv/linear of ``graph``: the bias and the following BatchNorm's scale and shift of
    its fully masked output rows become zero, in ``model`` (matched by module name)."""
    modules = dict(model.named_modules())
    for heads in graph.attention:
        zero_dead_biases_(heads, model, masks)
    for mod, name in graph.names.items():
        mask = masks.get(f"{name}.weight")
        if mask is None or not isinstance(mod, weighted_types()):
            continue
        rows = mask.movedim(out_axis(mod), 0)
        dead = (~rows.reshape(rows.shape[0], -1).any(dim=1)).to(mod.weight.device)
        if not bool(dead.any()):
            continue
        targets = [getattr(modules[name], "bias", None)]
        norm = graph.norm_after(mod)
        if norm is not None:
            target_norm = modules[graph.names[norm]]
            targets += [target_norm.weight, target_norm.bias]
        for t in targets:
            if t is not None:
                t[dead] = 0


def _as_masks(masks) -> dict[str, Tensor]:
    return {n: m.detach().to(torch.bool) for n, m in masks.items()}


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    named = dict(model.named_parameters())
    for name, m in masks.items():
        if name not in named:
            raise MaskError(f"mask {name!r} names no parameter of {type(model).__name__}")
        named[name].mul_(m.to(named[name].device, named[name].dtype))


def zero_masked_channels_(model: nn.Module, masks: Mapping[str, Tensor], example_inputs: Tensor) -> nn.Module:
    """Make ``model`` the *channel-masked model* (module docstring): weights masked, and the bias and
    following BatchNorm scale/shift of every fully masked output filter set to zero. In place."""
    masks = _as_masks(masks)
    apply_masks_(model, masks)
    _zero_masked_outputs_(ChannelGraph(copy.deepcopy(model), example_inputs), masks, model)
    return model


@dataclass
class CompactResult:
    """The compact model and what happened: channels removed / kept-although-masked per group (keyed
    by the group's root layer), parameter counts, Torch-Pruning's history (replayable), and the largest
    output difference to the channel-masked model on the example inputs."""

    model: nn.Module
    removed: dict[str, int] = field(default_factory=dict)
    coupled: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    history: list = field(default_factory=list)
    max_abs_diff: float | None = None

    def summary(self) -> str:
        rows = [f"{'group (root layer)':<28} {'removed':>8} {'masked-but-coupled':>19}"]
        for name in self.removed:
            rows.append(f"{name:<28} {self.removed[name]:>8} {self.coupled.get(name, 0):>19}")
        rows.append(f"parameters {self.params_before:,} -> {self.params_after:,} "
                    f"({self.params_after / max(self.params_before, 1):.3f}x)")
        if self.max_abs_diff is not None:
            rows.append(f"max |compact - masked| on the example inputs: {self.max_abs_diff:.3g}")
        return "\n".join(rows)


def _outputs(model: nn.Module, inputs) -> Tensor:
    return logits_of(call_model(model, inputs))


def parity_tolerance(reference: Tensor, rtol: float, atol: float) -> float:
    """``atol + rtol * max |reference|``: the compact-parity bound, relative to the output's scale (float32
    rounding grows with it: logits of 130 differ by ~1e-5 for a reordered but exact sum)."""
    return atol + rtol * float(reference.detach().abs().max()) if reference.numel() else atol


@torch.no_grad()
def compact_model(model: nn.Module, masks: Mapping[str, Tensor], example_inputs, *, verify: bool = True,
                  rtol: float = 1e-5, atol: float = 0.0) -> CompactResult:
    """A physically smaller copy of ``model`` equal to its channel-masked version (module docstring).

    ``masks`` (a MaskSet or ``{parameter name: bool tensor}``) must remove whole output filters or input
    channels (:func:`check_channel_aligned` names the first layer that does not); attention heads go
    whole (:mod:`prunekit.structure.heads`, :mod:`prunekit.export.heads`). ``example_inputs`` is a batch (a tensor, or a mapping of keyword
    inputs such as ``{"input_ids": ...}``) used to trace the graph and, with ``verify``, to check the
    outputs (logits by :func:`prunekit.modelio.logits_of`): a difference above
    ``atol + rtol * max |masked output|`` raises :class:`MaskError`. ``model`` itself is not changed.
    """
    masks = _as_masks(masks)
    check_channel_aligned(masks)
    work = copy.deepcopy(model).eval()
    apply_masks_(work, masks)
    before = sum(p.numel() for p in work.parameters())
    graph = ChannelGraph(work, example_inputs)
    _zero_masked_outputs_(graph, masks, work)
    reference = _outputs(work, example_inputs) if verify else None
    result = CompactResult(work, params_before=before)
    for group in graph.groups:  # planned one by one: an earlier removal can zero a gather's outputs
        p = plan_group(group, masks)
        graph.remove(p.group, p.remove)
        if p.group.prunable:
            result.removed[p.group.root_name] = len(p.remove)
            result.coupled[p.group.root_name] = p.coupled
    result.history = graph.history()
    for heads in graph.attention:  # after Torch-Pruning's surgery: an nn.MultiheadAttention is replaced
        dead = dead_units(heads, masks)
        if bool(dead.all()):
            dead[0] = False  # keep one (zero) head
        units = dead.nonzero().flatten().tolist()
        remove_units_(work, heads, units)
        result.removed[f"{heads.name} (heads)"] = len(units)
        if units:
            result.history.append([heads.name, HEADS, units])
    result.params_after = sum(p.numel() for p in work.parameters())
    if reference is not None:
        diff = float((_outputs(work, example_inputs) - reference).abs().max())
        result.max_abs_diff = diff
        tol = parity_tolerance(reference, rtol, atol)
        if not diff <= tol:
            raise MaskError(f"compact export changed the outputs by {diff:.3g} (> {tol:.3g} = {atol:g} + {rtol:g} x "
                            "max |output|): the model has an operation that does not map a zero channel to zero "
                            "between removed channels")
    return result


HEADS = "heads"  # history entries [attention module, "heads", removed units]


def rebuild_compact(model: nn.Module, history: list, example_inputs) -> nn.Module:
    """Give a freshly built original ``model`` the shapes of a compact export by replaying its
    ``history`` (:attr:`CompactResult.history`); load the compact weights into the result. In place."""
    graph = ChannelGraph(model, example_inputs)
    channel_steps = [h for h in history if h[1] != HEADS]
    try:
        graph.dg.load_pruning_history([[n, bool(o), list(i)] for n, o, i in channel_steps])
        attention = {a.name: a for a in graph.attention}
        for name, _, units in (h for h in history if h[1] == HEADS):
            remove_units_(model, attention[name], [int(u) for u in units])
    except (AttributeError, IndexError, ValueError, TypeError, KeyError) as e:
        raise MaskError(f"compact history does not fit {type(model).__name__} ({e})") from None
    return model
