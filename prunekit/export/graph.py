"""Channel groups of a model from Torch-Pruning's dependency graph.

Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023 (``torch_pruning``): a *group* is the
set of tensor dimensions that must lose the same channels together (a conv's output rows, its
BatchNorm, every layer that reads those channels, and every other producer added into the same
residual stream). prunekit reads the groups, decides per channel whether removing it is exact, and lets
Torch-Pruning do the surgery.

Parameter-free option-A shortcuts (``PadShortcut``: subsample and zero-pad the new channels) are not
channel-preserving, so a tracer that treats them as element-wise ops merges streams of different widths.
They are replaced by :class:`ChannelGather`, an equivalent index-aware module with its own pruner: an
output channel is an input channel or an always-zero channel, and both sides can lose channels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

try:  # optional dependency (extra "structured")
    import torch_pruning as tp
except ImportError:  # pragma: no cover - exercised only without the extra
    tp = None


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


def replace_pad_shortcuts(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Swap every ``PadShortcut`` of ``model`` for an equivalent :class:`ChannelGather`; returns how many."""
    from ..models.resnet_cifar import PadShortcut

    pads = {name: m for name, m in model.named_modules() if isinstance(m, PadShortcut)}
    if not pads:
        return 0
    widths: dict[str, int] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: widths.__setitem__(n, args[0].shape[1]))
             for n, m in pads.items()]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    for name, m in pads.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, ChannelGather.from_pad(widths[name], m.pad, m.extra).to(example_inputs.device))
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
    """Channels that are removed together; ``size`` channels numbered as the root layer's outputs."""

    root_name: str
    root: nn.Module
    handler: Any
    size: int
    members: list[Member] = field(default_factory=list)
    reaches_output: bool = False
    unsupported: str | None = None  # the member that prunekit cannot reason about, if any

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == PRODUCER]

    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == CONSUMER]

    def norms(self) -> list[Member]:
        return [m for m in self.members if m.role == NORM]

    @property
    def prunable(self) -> bool:
        return not self.reaches_output and self.unsupported is None


_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _role(dg, module: nn.Module, handler) -> str:
    if isinstance(module, _WEIGHTED + (ChannelGather,)):
        if isinstance(module, _WEIGHTED[:3]) and module.groups != 1:
            return OTHER
        return PRODUCER if dg.is_out_channel_pruning_fn(handler) else CONSUMER
    if isinstance(module, _NORM_TYPES):
        return NORM
    return OTHER


class ChannelGraph:
    """The dependency graph of ``model`` (traced once on ``example_inputs``) and its channel groups.

    ``model`` is modified: option-A shortcuts become :class:`ChannelGather` (same function). Build it on
    the copy you intend to shrink.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor):
        require_torch_pruning()
        replace_pad_shortcuts(model, example_inputs)
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs, customized_pruners={ChannelGather: _gather_pruner_class()}, verbose=False)
        finally:
            model.train(was_training)
        self.groups = _gather_order([self._describe(g) for g in self.dg.get_all_groups(root_module_types=_WEIGHTED)])

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
        if self._feeds_output(out):
            out.reaches_output = True
        return out

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
