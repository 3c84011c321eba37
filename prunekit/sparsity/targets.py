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

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": CONV_TYPES,
    "linear": (nn.Linear,),
    "conv_linear": CONV_TYPES + (nn.Linear,),
}
SHORTCUT_WORDS = ("shortcut", "downsample")


@dataclass(frozen=True)
class Targets:
    """A policy naming the prunable weights of a model, in ``model.named_modules()`` order.

    ``keep_first_dense`` / ``keep_last_dense`` drop the first / last selected layer (module order);
    ``keep_shortcuts_dense`` drops 1x1 convs whose qualified name contains ``shortcut`` or
    ``downsample`` (the model zoo's naming); ``include`` keeps only names matching one of the globs;
    ``exclude`` drops names matching any glob. Globs match the parameter name, e.g. ``"fc.weight"``.
    """

    layers: str = "conv_linear"
    keep_first_dense: bool = False
    keep_last_dense: bool = False
    keep_shortcuts_dense: bool = False
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.layers not in LAYER_TYPES:
            raise ConfigError(
                f"targets.layers={self.layers!r} is not allowed; allowed: {', '.join(LAYER_TYPES)}"
            )

    def select(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Ordered ``{parameter name: weight}`` of the prunable weights of ``model``."""
        types = LAYER_TYPES[self.layers]
        chosen: list[tuple[str, nn.Module]] = [
            (name, m) for name, m in model.named_modules() if isinstance(m, types) and m.weight is not None
        ]
        if self.keep_first_dense and chosen:
            chosen = chosen[1:]
        if self.keep_last_dense and chosen:
            chosen = chosen[:-1]
        out: dict[str, nn.Parameter] = {}
        for name, m in chosen:
            pname = f"{name}.weight" if name else "weight"
            if self.keep_shortcuts_dense and _is_shortcut(name, m):
                continue
            if self.include and not any(fnmatch.fnmatchcase(pname, g) for g in self.include):
                continue
            if any(fnmatch.fnmatchcase(pname, g) for g in self.exclude):
                continue
            out[pname] = m.weight
        return out


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
            from ..registry import suggest

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
        for key in ("include", "exclude"):
            if key in spec:
                spec[key] = tuple(spec[key])
        return replace(base, **spec)
    raise ConfigError(f"targets={spec!r} is not allowed; allowed: a preset name, a mapping, or Targets")
