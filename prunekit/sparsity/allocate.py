"""Per-layer sparsity budgets.

* ``uniform``: every layer at the target sparsity.
* ``erk``: Erdős–Rényi-Kernel (Evci et al., RigL, 2020; sparse_learning lineage): density of layer l
  proportional to ``(sum(shape) / prod(shape)) ** power_scale`` over the full weight shape, with the
  iterative capping of DPaI ``npb.py: ERK_sparsify`` and GraNet ``Masking.init``: a layer whose density
  would exceed 1 is made dense and the scale ``epsilon`` is re-solved for the rest.
* ``er``: Erdős–Rényi (Mocanu et al., SET, 2018): the same with only the two fan dimensions.
* ``custom``: an explicit ``{name or glob: sparsity}`` map.

``global`` allocation (one threshold across layers) depends on scores, not only shapes: see
:func:`prunekit.sparsity.select.select`.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Mapping, Sequence

from ..errors import ConfigError
from ..registry import Registry, suggest
from .units import check_sparsity

Shapes = Mapping[str, Sequence[int]]


def uniform(shapes: Shapes, sparsity: float) -> dict[str, float]:
    check_sparsity(sparsity)
    return {name: float(sparsity) for name in shapes}


def _erk_raw(shape: Sequence[int], power_scale: float, kernel: bool) -> float:
    dims = list(shape) if kernel else list(shape[:2])
    return (sum(dims) / math.prod(dims)) ** power_scale


def erk(shapes: Shapes, sparsity: float, power_scale: float = 1.0, kernel: bool = True) -> dict[str, float]:
    """ERK (``kernel=True``) or ER (``kernel=False``) per-layer sparsities for a total ``sparsity``.

    Returns ``{name: sparsity}``; layers capped at density 1 get sparsity 0.0. The total number of kept
    weights ``sum(density_l * numel_l)`` equals ``(1 - sparsity) * N`` up to float rounding.
    """
    check_sparsity(sparsity)
    density = 1.0 - sparsity
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: _erk_raw(s, power_scale, kernel) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for n in shapes:
            if n in dense:
                rhs -= numel[n] * (1.0 - density)
            else:
                rhs += numel[n] * density
                divisor += raw[n] * numel[n]
        if divisor == 0.0:  # every layer dense: only possible at sparsity 0
            break
        epsilon = rhs / divisor
        free = [n for n in shapes if n not in dense]
        max_raw = max(raw[n] for n in free)
        if max_raw * epsilon > 1.0:
            dense.update(n for n in free if raw[n] == max_raw)
        else:
            break
    return {n: 0.0 if n in dense else 1.0 - epsilon * raw[n] for n in shapes}


def er(shapes: Shapes, sparsity: float, power_scale: float = 1.0) -> dict[str, float]:
    return erk(shapes, sparsity, power_scale, kernel=False)


def custom(shapes: Shapes, mapping: Mapping[str, float], default: float | None = None) -> dict[str, float]:
    """Per-layer sparsities from a map whose keys are parameter names or globs; layers not matched take
    ``default`` (an error when ``default`` is None).

    The meaning does not depend on the keys' order (run hashes sort them): an exact name beats every
    glob, and a layer matched by several globs with different values is refused.
    """
    out: dict[str, float] = {}
    for name in shapes:
        if name in mapping:
            value = mapping[name]
        else:
            hits = {pat: v for pat, v in mapping.items() if fnmatch.fnmatchcase(name, pat)}
            if len(set(hits.values())) > 1:
                first, second = list(hits)[:2]
                raise ConfigError(f"custom sparsity map: layer {name!r} matches both {first!r} and {second!r} with "
                                  "different values; allowed: name the layer exactly, or globs that do not overlap")
            value = next(iter(hits.values()), default)
        if value is None:
            raise ConfigError(f"custom sparsity map has no entry for layer {name!r}; add it or set a default")
        out[name] = check_sparsity(value, f"sparsity[{name}]")
    unused = [p for p in mapping if not any(p == n or fnmatch.fnmatchcase(n, p) for n in shapes)]
    if unused:
        raise ConfigError(f"custom sparsity map key {unused[0]!r} matches no prunable layer")
    return out


ALLOCATORS: Registry = Registry("allocation")
ALLOCATORS.add("uniform", uniform, help="every layer at the target sparsity")
ALLOCATORS.add("erk", erk, help="Erdős–Rényi-Kernel budgets (RigL), dense-capped layers re-solved")
ALLOCATORS.add("er", er, help="Erdős–Rényi budgets (SET): the two fan dimensions only")

#: the allocations that are not shape-only allocators: one score threshold across layers, and a map
GLOBAL, CUSTOM = "global", "custom"


def allocation_kind(allocation: "str | Mapping[str, float]") -> str:
    """``custom`` for a ``{name or glob: sparsity}`` map, else the allocation's name."""
    return CUSTOM if isinstance(allocation, Mapping) else str(allocation)


def check_allocation(allocation: "str | Mapping[str, float]", allowed: Sequence[str],
                     where: str = "allocation") -> "str | dict[str, float]":
    """The allocation if its kind is one of ``allowed`` (names of :data:`ALLOCATORS`, ``global``,
    ``custom``); a one-line :class:`ConfigError` otherwise."""
    kind = allocation_kind(allocation)
    if kind not in allowed:
        raise ConfigError(f"{where}={allocation!r} is not allowed{suggest(kind, list(allowed))}; allowed: "
                          f"{', '.join(allowed)}" + (" (a {layer name or glob: sparsity} map)" if CUSTOM in allowed else ""))
    if kind == CUSTOM:
        return {str(k): check_sparsity(float(v), f"{where}[{k}]") for k, v in allocation.items()}
    return kind


def allocate(kind: "str | Mapping[str, float]", shapes: Shapes, sparsity: float, **kwargs) -> dict[str, float]:
    """Per-layer sparsities: an allocator by name (``uniform``, ``erk``, ``er``) or a custom map."""
    if isinstance(kind, Mapping):
        return custom(shapes, kind)
    check_allocation(kind, ALLOCATORS.names())
    return ALLOCATORS.get(kind)(shapes, sparsity, **kwargs)


def achieved_sparsity(shapes: Shapes, sparsities: Mapping[str, float]) -> float:
    """Total sparsity after per-layer ``int(s_l * numel_l)`` rounding."""
    total = sum(math.prod(s) for s in shapes.values())
    zeros = sum(int(sparsities[n] * math.prod(s)) for n, s in shapes.items())
    return zeros / total
