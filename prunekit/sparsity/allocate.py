"""Per-layer sparsity budgets.

* ``uniform``: every layer at the target sparsity.
* ``erk``: Erdős–Rényi-Kernel (Evci et al., RigL, 2020; sparse_learning lineage): density of layer l
  proportional to ``(sum(shape) / prod(shape)) ** power_scale`` over the full weight shape, with the
  iterative capping of DPaI ``npb.py: ERK_sparsify`` and GraNet ``Masking.init``: a layer whose density
  would exceed 1 is made dense and the scale ``epsilon`` is re-solved for the rest.
* ``er``: Erdős–Rényi (Mocanu et al., SET, 2018): the same with only the two fan dimensions.
* ``custom``: an explicit ``{name or glob: sparsity}`` map.

``global`` allocation (one threshold across layers) depends on scores, not only shapes: see
:func:`prunekit.sparsity.select.global_topk`.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Mapping, Sequence

from ..errors import ConfigError
from ..registry import suggest
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
    """Per-layer sparsities from a map whose keys are parameter names or globs (first match wins);
    layers not matched take ``default`` (an error when ``default`` is None)."""
    out: dict[str, float] = {}
    for name in shapes:
        value = next((v for pat, v in mapping.items() if pat == name or fnmatch.fnmatchcase(name, pat)), default)
        if value is None:
            raise ConfigError(f"custom sparsity map has no entry for layer {name!r}; add it or set a default")
        out[name] = check_sparsity(value, f"sparsity[{name}]")
    unused = [p for p in mapping if not any(p == n or fnmatch.fnmatchcase(n, p) for n in shapes)]
    if unused:
        raise ConfigError(f"custom sparsity map key {unused[0]!r} matches no prunable layer")
    return out


ALLOCATORS = {"uniform": uniform, "erk": erk, "er": er}


def allocate(kind: str, shapes: Shapes, sparsity: float, **kwargs) -> dict[str, float]:
    """Dispatch by name: ``uniform``, ``erk``, ``er``."""
    if kind not in ALLOCATORS:
        raise ConfigError(
            f"allocation={kind!r} is not allowed{suggest(kind, list(ALLOCATORS) + ['global'])}; "
            f"allowed: {', '.join(ALLOCATORS)}, global"
        )
    return ALLOCATORS[kind](shapes, sparsity, **kwargs)


def achieved_sparsity(shapes: Shapes, sparsities: Mapping[str, float]) -> float:
    """Total sparsity after per-layer ``int(s_l * numel_l)`` rounding."""
    total = sum(math.prod(s) for s in shapes.values())
    zeros = sum(int(sparsities[n] * math.prod(s)) for n, s in shapes.items())
    return zeros / total
