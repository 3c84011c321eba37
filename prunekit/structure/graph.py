"""Channel groups of a model from Torch-Pruning's dependency graph.

Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023 (``torch_pruning``): a *group* is the
set of tensor dimensions that must lose the same channels together (a conv's output rows, its
BatchNorm, every layer that reads those channels, and every other producer added into the same
residual stream). prunekit reads the groups, decides per channel whether removing it is exact, and lets
Torch-Pruning do the surgery.

Parameter-free option-A shortcuts (a module declaring ``structure_kind = "pad_shortcut"`` with ``pad`` and
``extra``, as the zoo's ``PadShortcut``: subsample and zero-pad the new channels) are not
channel-preserving, so a tracer that treats them as element-wise ops merges streams of different widths.
They are replaced by :class:`ChannelGather`, an equivalent index-aware module with its own pruner: an
output channel is an input channel or an always-zero channel, and both sides can lose channels.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..modelio import call_model, hf_conv1d_type, logits_of
from .heads import AttentionHeads, find_attention

try:  # optional dependency (extra "structured")
    import torch_pruning as tp
except ImportError:  # pragma: no cover - exercised only without the extra
    tp = None


PAD_SHORTCUT = "pad_shortcut"  # a module's ``structure_kind``: stride-2 subsampling, ``pad``/``extra`` zero channels


def require_torch_pruning() -> Any:
    if tp is None:
        raise ConfigError("structured export needs torch-pruning; install it with pip install 'prunekit[structured]'")
    return tp


class ChannelGather(nn.Module):
    """``out[:, j] = x[:, gather[j], ::stride, ::stride]``, or zeros where ``gather[j] == in_channels``.

    With ``gather = [C, .., C, 0, .., C-1, C, .., C]`` it is He et al.'s option-A shortcut (CVPR 2016,
    section 4.2; ``PadShortcut``). One zero channel is appended to the input and every output channel
    picks an input channel by index, so removing channels on either side only edits ``gather``.
    """

    def __init__(self, in_channels: int, gather: torch.Tensor, stride: int = 2):
        super().__init__()
        self.in_channels = int(in_channels)
        self.stride = int(stride)
        self.register_buffer("gather", gather.to(torch.long).clone())

    @classmethod
    def from_pad(cls, in_channels: int, pad: int, extra: int, stride: int = 2) -> "ChannelGather":
        gather = torch.full((pad + in_channels + extra,), in_channels, dtype=torch.long)
        gather[pad:pad + in_channels] = torch.arange(in_channels)
        return cls(in_channels, gather, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, 0, 1)).index_select(1, self.gather)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.gather.numel()}, stride={self.stride}"


def _gather_pruner_class():
    class ChannelGatherPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = (ChannelGather,)

        def prune_out_channels(self, layer: ChannelGather, idxs: Sequence[int]) -> nn.Module:
            keep = torch.ones(layer.gather.numel(), dtype=torch.bool)
            keep[list(idxs)] = False
            layer.gather = layer.gather[keep]
            return layer

        def prune_in_channels(self, layer: ChannelGather, idxs: Sequence[int]) -> nn.Module:
            # exact only for inputs that are always zero (compact.py removes nothing else here):
            # outputs that read them become zero channels, the others are renumbered
            removed = torch.zeros(layer.in_channels + 1, dtype=torch.bool)
            removed[list(idxs)] = True
            new_index = torch.arange(layer.in_channels + 1) - torch.cumsum(removed.long(), 0)
            new_in = layer.in_channels - len(set(idxs))
            new_index[removed] = new_in
            new_index[-1] = new_in
            layer.gather = new_index[layer.gather]
            layer.in_channels = new_in
            return layer

        def get_out_channels(self, layer: ChannelGather) -> int:
            return layer.gather.numel()

        def get_in_channels(self, layer: ChannelGather) -> int:
            return layer.in_channels

    return ChannelGatherPruner()


def _conv1d_pruner_class():
    """Torch-Pruning surgery for Hugging Face's ``Conv1D`` (GPT-2): a linear layer with weight ``[in, out]``."""

    class Conv1DPruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(layer.nf)) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            layer.nf = len(keep)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(layer.nx)) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            layer.nx = len(keep)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.nf

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.nx

    return Conv1DPruner()


def replace_pad_shortcuts(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Swap every pad shortcut of ``model`` (``structure_kind = "pad_shortcut"``, as the zoo's ``PadShortcut``)
    for an equivalent :class:`ChannelGather`; returns how many."""
    pads = {name: m for name, m in model.named_modules() if getattr(m, "structure_kind", None) == PAD_SHORTCUT}
    if not pads:
        return 0
    widths: dict[str, int] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: widths.__setitem__(n, args[0].shape[1]))
             for n, m in pads.items()]
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    for name, m in pads.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        device = next(iter(model.parameters())).device
        setattr(parent, attr, ChannelGather.from_pad(widths[name], m.pad, m.extra).to(device))
    return len(pads)


def _gather_order(groups: list["ChannelGroup"]) -> list["ChannelGroup"]:
    """Groups ordered so that a group read by a :class:`ChannelGather` comes before the group that
    gather writes: removing input channels turns gather outputs into zero channels, which the later
    group may then remove (the only way one group's removal changes another's)."""
    reads = {id(m.module): i for i, g in enumerate(groups) for m in g.consumers() if isinstance(m.module, ChannelGather)}
    after = {i: {reads[id(m.module)] for m in g.producers() if id(m.module) in reads} - {i}
             for i, g in enumerate(groups)}
    done: list[int] = []
    while len(done) < len(groups):
        ready = [i for i in range(len(groups)) if i not in done and after[i] <= set(done)]
        if not ready:  # a cycle cannot come from a feed-forward trace; keep the rest as traced
            ready = [i for i in range(len(groups)) if i not in done]
        done.append(ready[0])
    return [groups[i] for i in done]


# --- groups ------------------------------------------------------------------------------------------

PRODUCER, NORM, CONSUMER, OTHER = "producer", "norm", "consumer", "other"
DEPTHWISE = "depthwise"  # a depthwise conv reads and writes the same channel: producer and consumer at once


@dataclass
class Member:
    """One tensor dimension of a group: ``idxs`` in the module's own numbering, ``root`` the group
    channel each of them belongs to (several for a linear layer after a flatten)."""

    name: str
    module: nn.Module
    role: str
    idxs: list[int]
    root: list[int]


@dataclass
class ChannelGroup:
    """Channels that are removed together; ``size`` channels numbered as the root layer's outputs.

    ``period`` is set when a grouped convolution reads or writes the group: a removable *unit* is then
    the channels ``{p, p + period, p + 2 period, ...}`` (the same position in every conv group, so every
    conv group keeps the same width). ``heads`` names the attention module whose head projections write
    the group: those channels go in whole heads (:mod:`prunekit.structure.heads`), never one by one."""

    root_name: str
    root: nn.Module
    handler: Any
    size: int
    members: list[Member] = field(default_factory=list)
    reaches_output: bool = False
    unsupported: str | None = None  # the member that prunekit cannot reason about, if any
    period: int | None = None
    heads: str | None = None

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role in (PRODUCER, DEPTHWISE)]

    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role in (CONSUMER, DEPTHWISE)]

    def norms(self) -> list[Member]:
        return [m for m in self.members if m.role == NORM]

    @property
    def prunable(self) -> bool:
        return not self.reaches_output and self.unsupported is None and self.heads is None

    @property
    def units(self) -> int:
        return self.period or self.size

    def unit_of(self) -> torch.Tensor:
        """Per root channel, the unit it belongs to."""
        return torch.arange(self.size) % self.units


_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WEIGHTED = _CONV + (nn.Linear,)


def weighted_types() -> tuple[type, ...]:
    """Layers whose weight rows are output channels and columns input channels (Conv1D: transposed)."""
    c1d = hf_conv1d_type()
    return _WEIGHTED + ((c1d,) if c1d is not None else ())


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _CONV) and 1 < module.groups == module.in_channels == module.out_channels


def _role(dg, module: nn.Module, handler) -> str:
    if isinstance(module, weighted_types() + (ChannelGather,)):
        if is_depthwise(module):
            return DEPTHWISE
        return PRODUCER if dg.is_out_channel_pruning_fn(handler) else CONSUMER
    if isinstance(module, _NORM_TYPES):
        return NORM
    return OTHER


def _plain(module: nn.Module) -> bool:
    """Weight ``[out, in, ...]`` with every output reading every input (no conv groups, not Conv1D)."""
    return module.groups == 1 if isinstance(module, _CONV) else isinstance(module, nn.Linear)


def _entry_table(member: Member, shape: torch.Size) -> torch.Tensor:
    """Flat weight indices of each of the module's channels on the member's side, ``[channels, entries]``."""
    mod, flat = member.module, torch.arange(math.prod(shape)).reshape(shape)
    if member.role == DEPTHWISE or (member.role == PRODUCER and isinstance(mod, _CONV)):
        return flat.reshape(shape[0], -1)
    if not isinstance(mod, _CONV):  # Conv1D, weight [in, out]
        return flat.t().contiguous() if member.role == PRODUCER else flat
    g = mod.groups  # grouped conv input channel g * (in / g) + p: rows of conv group g, column p
    per_out, per_in = shape[0] // g, shape[1]
    return flat.reshape(g, per_out, per_in, -1).permute(0, 2, 1, 3).reshape(g * per_in, -1)


def member_entries(member: Member, t: torch.Tensor, idxs: Sequence[int] | None = None) -> torch.Tensor:
    """The entries of weight-shaped ``t`` (mask, scores) that belong to each of ``idxs`` (default: the
    member's), one row per channel: output rows for producers, input columns for consumers."""
    idxs = torch.as_tensor(member.idxs if idxs is None else list(idxs), dtype=torch.long)
    if _plain(member.module):
        side = t if member.role == PRODUCER else t.transpose(0, 1)
        return side[idxs.to(t.device)].reshape(len(idxs), -1)
    table = _entry_table(member, t.shape).to(t.device)
    return t.reshape(-1)[table[idxs.to(t.device)]]


def clear_entries_(member: Member, mask: torch.Tensor, idxs: Sequence[int]) -> None:
    """Set the member's entries of ``mask`` for channels ``idxs`` to ``False`` (in place)."""
    idxs = torch.as_tensor(list(idxs), dtype=torch.long, device=mask.device)
    if _plain(member.module):
        if member.role == PRODUCER:
            mask[idxs] = False
        else:
            mask[:, idxs] = False
        return
    mask.view(-1)[_entry_table(member, mask.shape).to(mask.device)[idxs].flatten()] = False


@contextlib.contextmanager
def _no_cache(model: nn.Module):
    """Hugging Face models off their key/value cache while traced (the cache is not part of the graph)."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old:
        config.use_cache = False
    try:
        yield
    finally:
        if old:
            config.use_cache = old


class ChannelGraph:
    """The dependency graph of ``model`` (traced once on ``example_inputs``: a tensor, or a mapping of
    keyword inputs) and its channel groups; ``attention`` lists the attention modules whose heads are
    units of their own (:mod:`prunekit.structure.heads`).

    ``model`` is modified: option-A shortcuts become :class:`ChannelGather` (same function). Build it on
    the copy you intend to shrink.
    """

    def __init__(self, model: nn.Module, example_inputs: Any):
        require_torch_pruning()
        replace_pad_shortcuts(model, example_inputs)
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.attention: list[AttentionHeads] = find_attention(model)
        pruners: dict = {ChannelGather: _gather_pruner_class()}
        if hf_conv1d_type() is not None:
            pruners[hf_conv1d_type()] = _conv1d_pruner_class()
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad(), _no_cache(model):
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs, forward_fn=call_model, output_transform=logits_of,
                    customized_pruners=pruners, verbose=False)
        finally:
            model.train(was_training)
        roots = weighted_types()
        self.groups = _gather_order([self._describe(g) for g in self.dg.get_all_groups(root_module_types=roots)])

    def _describe(self, group) -> ChannelGroup:
        first = group[0]
        root = first.dep.target.module
        out = ChannelGroup(self.names.get(root, str(root)), root, first.dep.handler, len(first.idxs))
        for item in group:
            target = item.dep.target
            if target.type == tp.ops.OPTYPE.OUTPUT:
                out.reaches_output = True
                continue
            module = target.module
            if not isinstance(module, nn.Module) or module not in self.names:
                if isinstance(module, nn.Parameter) or any(True for _ in module.parameters(recurse=False)):
                    out.unsupported = out.unsupported or str(module)
                continue  # tracer ops: element-wise, reshape, concat, slice
            role = _role(self.dg, module, item.dep.handler)
            if role == OTHER:
                if any(True for _ in module.parameters(recurse=False)):
                    out.unsupported = out.unsupported or self.names[module]
                continue
            out.members.append(Member(self.names[module], module, role, list(item.idxs), list(item.root_idxs)))
        self._set_period(out)
        projections = {p: a.name for a in self.attention for p in a.projections()}
        out.heads = next((projections[m.name] for m in out.producers() if m.name in projections), None)
        if self._feeds_output(out):
            out.reaches_output = True
        return out

    def _set_period(self, group: ChannelGroup) -> None:
        """Units of a group read or written by grouped convs (:class:`ChannelGroup`)."""
        blocks = []
        for m in group.members:
            mod = m.module
            if isinstance(mod, _CONV) and mod.groups > 1 and m.role != DEPTHWISE:
                if m.idxs != m.root or m.idxs != list(range(group.size)):
                    group.unsupported = group.unsupported or m.name
                    return
                blocks.append(group.size // mod.groups)
        if blocks:
            group.period = math.gcd(*blocks)

    def _feeds_output(self, group: ChannelGroup) -> bool:
        # the traced output is the root node itself when the last layer has no op after it
        return any(not self.dg.module2node[m.module].outputs for m in group.producers())

    def norm_after(self, module: nn.Module) -> nn.Module | None:
        """The BatchNorm that is the only reader of ``module``'s output, if any."""
        outs = self.dg.module2node[module].outputs if module in self.dg.module2node else []
        if len(outs) == 1 and isinstance(outs[0].module, _NORM_TYPES):
            return outs[0].module
        return None

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def remove(self, group: ChannelGroup, channels: Sequence[int]) -> None:
        """Physically remove root ``channels`` of ``group`` from every member (Torch-Pruning surgery)."""
        if channels:
            self.dg.get_pruning_group(group.root, group.handler, sorted(int(c) for c in channels)).prune()

    def history(self) -> list:
        """Torch-Pruning's pruning history (root layer, output side?, channels), JSON-serialisable."""
        return [[n, bool(o), [int(i) for i in idxs]] for n, o, idxs in self.dg.pruning_history()]
