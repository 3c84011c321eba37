"""Which parameters are prunable.

A :class:`Targets` policy selects weights of Conv1d/2d/3d and Linear modules by default (never biases,
never normalization parameters) with the options the references use:

=========== ======================================================================================
preset      policy (methods.md §5, "Cross-cutting notes")
=========== ======================================================================================
``default`` every conv and linear weight
``dpai``    every conv and linear weight: first conv, classifier and 1x1 shortcuts included
``granet``  same (``keep_first_dense=True`` reproduces ``--rm-first``)
``bip``     same for unstructured; structured BiP keeps linear layers dense (``layer_types=conv``)
``lap``     conv and linear weights except 1x1 shortcut convs (``keep_shortcuts_dense=True``)
=========== ======================================================================================
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

from torch import nn

from ..errors import ConfigError
from ..modelio import hf_conv1d_type
from ..registry import suggest

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_KINDS: dict[str, tuple[str, ...]] = {
    "conv": ("conv",),
    "linear": ("linear",),
    "conv_linear": ("conv", "linear"),
}
LAYER_TYPES = LAYER_KINDS  # the allowed ``layers`` values
SHORTCUT_WORDS = ("shortcut", "downsample")
#: the packed projection weights of ``nn.MultiheadAttention`` (q/k/v in one tensor, or three)
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def weight_layout(module: nn.Module) -> str:
    """``"out_in"`` (PyTorch's conv/linear: output units on dim 0) or ``"in_out"`` (HF ``Conv1D``)."""
    conv1d = hf_conv1d_type()
    return "in_out" if conv1d is not None and isinstance(module, conv1d) else "out_in"


def _module_weights(module: nn.Module) -> list[tuple[str, str]]:
    """``(attribute, kind)`` of the prunable weights a module owns directly: ``kind`` is ``conv``,
    ``linear`` or ``embedding``."""
    if isinstance(module, CONV_TYPES):
        return [("weight", "conv")] if module.weight is not None else []
    if isinstance(module, nn.Linear):
        return [("weight", "linear")]
    if isinstance(module, nn.MultiheadAttention):
        return [(a, "linear") for a in MHA_WEIGHTS if getattr(module, a, None) is not None]  # q, k, v packed
    conv1d = hf_conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return [("weight", "linear")]
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return [("weight", "embedding")]
    return []


@dataclass(frozen=True)
class TargetRow:
    """One parameter of a model in a target policy's view: pruned or kept dense, and why."""

    name: str
    shape: tuple[int, ...]
    pruned: bool
    reason: str  # what it is when pruned; why it stays dense otherwise, with the setting that changes it
    tied: tuple[str, ...] = ()  # other names of the same tensor (weight tying)


@dataclass(frozen=True)
class Targets:
    """A policy naming the prunable weights of a model, in ``model.named_modules()`` order.

    Prunable by default: the weights of ``nn.Conv1d/2d/3d``, ``nn.Linear``, Hugging Face ``Conv1D``
    (GPT-2, weight ``[in, out]``) and ``nn.MultiheadAttention``'s projections (``in_proj_weight``, which
    packs q, k and v; ``out_proj`` is a Linear). Never biases or normalization parameters.
    ``layers`` picks the kinds (``conv``, ``linear``, ``conv_linear``); ``embeddings=True`` adds
    ``nn.Embedding`` weights; ``params`` adds any other parameter by name glob. ``keep_first_dense`` /
    ``keep_last_dense`` drop the first / last selected layer (module order); ``keep_shortcuts_dense``
    drops 1x1 convs whose qualified name contains ``shortcut`` or ``downsample`` (the model zoo's naming);
    ``include`` keeps only names matching one of the globs; ``exclude`` drops names matching any glob.
    Globs match the parameter name, e.g. ``"fc.weight"``.

    **Tied parameters** (one tensor under several names, e.g. GPT-2's ``lm_head.weight`` and
    ``transformer.wte.weight``) get one mask under the name ``model.named_parameters()`` gives first,
    counted and enforced once; :meth:`explain` lists the other names. A linear layer tied to an
    embedding follows ``embeddings`` (pruning it prunes the embedding).
    """

    layers: str = "conv_linear"
    keep_first_dense: bool = False
    keep_last_dense: bool = False
    keep_shortcuts_dense: bool = False
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    embeddings: bool = False
    params: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.layers not in LAYER_KINDS:
            raise ConfigError(
                f"targets.layers={self.layers!r} is not allowed; allowed: {', '.join(LAYER_KINDS)}"
            )

    def __str__(self) -> str:
        changed = {k: v for k, v in self.__dict__.items() if v != Targets.__dataclass_fields__[k].default
                   and not (v == () and k in ("include", "exclude", "params"))}
        return "Targets(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    def select(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Ordered ``{parameter name: weight}`` of the prunable weights of ``model``."""
        named = dict(model.named_parameters())
        return {r.name: named[r.name] for r in self.explain(model) if r.pruned}

    def explain(self, model: nn.Module) -> list[TargetRow]:
        """Every parameter of ``model`` (each tensor once), pruned or dense, with the reason."""
        canonical: dict[int, str] = {}
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in canonical:
                aliases[id(p)].append(name)
            else:
                canonical[id(p)], aliases[id(p)] = name, []
        kinds = LAYER_KINDS[self.layers]
        layer_of: dict[int, tuple[str, nn.Module, str]] = {}  # id(param) -> (module name, module, kind)
        embedding_ids: set[int] = set()
        for mname, module in model.named_modules(remove_duplicate=False):
            for attr, kind in _module_weights(module):
                p = getattr(module, attr)
                if kind == "embedding":
                    embedding_ids.add(id(p))
                layer_of.setdefault(id(p), (mname, module, kind))
        chosen = [i for i, (_, _, kind) in layer_of.items() if kind in kinds]  # module order
        first_last = {}
        if self.keep_first_dense and chosen:
            first_last[chosen[0]] = "first layer (targets.keep_first_dense=false prunes it)"
        if self.keep_last_dense and chosen:
            first_last.setdefault(chosen[-1], "last layer (targets.keep_last_dense=false prunes it)")
        rows = []
        for pid, name in canonical.items():
            p = _param_by_id(model, name)
            reason, pruned = self._decide(pid, name, p, layer_of, embedding_ids, kinds, first_last)
            rows.append(TargetRow(name, tuple(p.shape), pruned, reason, tuple(aliases[pid])))
        return rows

    def _decide(self, pid, name, p, layer_of, embedding_ids, kinds, first_last) -> tuple[str, bool]:
        extra = any(fnmatch.fnmatchcase(name, g) for g in self.params)
        if pid in layer_of:
            mname, module, kind = layer_of[pid]
            what = f"{type(module).__name__} weight"
            if isinstance(module, nn.MultiheadAttention) or (weight_layout(module) == "in_out" and "attn" in mname):
                what += " (q, k, v packed: one layer for per-layer budgets)"
            if pid in embedding_ids and not self.embeddings:
                return f"{what}, an embedding (targets.embeddings=true prunes it)", False
            if kind != "embedding" and kind not in kinds:
                return f"{what} (targets.layers={self.layers!r}; 'conv_linear' prunes it)", False
        elif extra:
            what = "parameter matched by targets.params"
        elif p.dim() <= 1:
            return "bias or normalization parameter", False
        else:
            return "not a conv/linear/attention weight (targets.params globs add it)", False
        if pid in first_last:
            return first_last[pid], False
        if self.keep_shortcuts_dense and pid in layer_of and _is_shortcut(*layer_of[pid][:2]):
            return "1x1 shortcut conv (targets.keep_shortcuts_dense=false prunes it)", False
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return "not matched by targets.include", False
        hit = next((g for g in self.exclude if fnmatch.fnmatchcase(name, g)), None)
        if hit is not None:
            return f"excluded by targets.exclude {hit!r}", False
        return what, True


def unit_dim(model: nn.Module, name: str, structure: str) -> int:
    """The axis of weight ``name`` that holds its filters (output units) or channels (input units).

    PyTorch's conv/linear weights are ``[out, in, ...]``; Hugging Face's ``Conv1D`` stores ``[in, out]``;
    packed attention projections (``in_proj_weight``) stack q, k and v on the output axis, so a "filter"
    there is one q, k or v row, not a head, and those are refused for whole-unit structures.
    """
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr in MHA_WEIGHTS:
        raise ConfigError(f"structure={structure!r} on {name!r}: a packed attention projection has no per-unit "
                          "layout; allowed: the structured method (whole heads), or targets.exclude it")
    if module.get_parameter(attr).dim() < 2:
        raise ConfigError(f"structure={structure!r} on {name!r}: a {module.get_parameter(attr).dim()}-D parameter has no "
                          "filters or channels; allowed: conv/linear weights (targets.exclude it)")
    axis = {"filter": 0, "channel": 1}[structure]
    return 1 - axis if weight_layout(module) == "in_out" else axis


def targets_table(rows: list[TargetRow], dense_only: bool = False) -> str:
    """Plain text: each parameter, pruned or kept dense with the reason (and the setting that changes it),
    tied names beside the tensor's mask name. ``dense_only`` lists only what is kept dense."""
    shown = [r for r in rows if not (dense_only and r.pruned)]
    width = max([len(r.name) for r in shown] + [10])
    lines = [f"{'parameter':<{width}} {'shape':<18} {'':<6} why"]
    for r in shown:
        tied = f"; tied: {', '.join(r.tied)}" if r.tied else ""
        lines.append(f"{r.name:<{width}} {str(r.shape):<18} {'prune' if r.pruned else 'dense':<6} {r.reason}{tied}")
    pruned = [r for r in rows if r.pruned]
    n_pruned = sum(_numel(r.shape) for r in pruned)
    n_all = sum(_numel(r.shape) for r in rows)
    lines.append(f"{len(pruned)} of {len(rows)} tensors are targets: {n_pruned:,} of {n_all:,} parameters "
                 f"({n_pruned / max(n_all, 1):.1%}); sparsity counts the targets only, each tied tensor once")
    return "\n".join(lines)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _param_by_id(model: nn.Module, name: str) -> nn.Parameter:
    return model.get_parameter(name)


def _is_shortcut(name: str, module: nn.Module) -> bool:
    if not isinstance(module, CONV_TYPES):
        return False
    one_by_one = all(k == 1 for k in module.kernel_size)
    return one_by_one and any(w in name.lower() for w in SHORTCUT_WORDS)


PRESETS: dict[str, Targets] = {
    "default": Targets(),
    "dpai": Targets(),
    "granet": Targets(),
    "bip": Targets(),
    "bip_structured": Targets(layers="conv"),
    "lap": Targets(keep_shortcuts_dense=True),
}


def resolve_targets(spec: "Targets | str | dict | None") -> Targets:
    """A Targets from a preset name, a dict of fields (optionally with ``preset``), or None."""
    if spec is None:
        return PRESETS["default"]
    if isinstance(spec, Targets):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ConfigError(
                f"targets={spec!r} is not a preset{suggest(spec, list(PRESETS))}; allowed: {', '.join(PRESETS)}"
            )
        return PRESETS[spec]
    if isinstance(spec, dict):
        spec = dict(spec)
        base = resolve_targets(spec.pop("preset", None))
        allowed = set(Targets.__dataclass_fields__)
        bad = sorted(set(spec) - allowed)
        if bad:
            raise ConfigError(f"targets has unknown field {bad[0]!r}; allowed: {', '.join(sorted(allowed))}")
        for key in ("include", "exclude", "params"):
            if key in spec:
                spec[key] = tuple(spec[key])
        return replace(base, **spec)
    raise ConfigError(f"targets={spec!r} is not allowed; allowed: a preset name, a mapping, or Targets")
