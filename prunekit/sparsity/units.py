"""Conversions between the papers' sparsity units and prunekit's canonical one.

prunekit speaks only of ``sparsity``: the fraction of prunable weights that are zero. Papers use
density (GraNet: ``1 - sparsity``), compression (DPaI: density ``= 10**-c``), keep ratio ``k``
(BiP, Hydra) or per-round rates (LAP, see :mod:`prunekit.sparsity.schedules`). Convert at the edge.
"""
from __future__ import annotations

import math

from ..errors import ConfigError


def check_sparsity(value: float, field: str = "sparsity", allow_one: bool = False) -> float:
    """Return ``value`` as float if it is a valid sparsity in [0, 1) (or [0, 1]), else raise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}={value!r} is not a number; allowed: a float in [0, 1)") from None
    upper_ok = v <= 1.0 if allow_one else v < 1.0
    if math.isnan(v) or v < 0.0 or not upper_ok:
        allowed = "[0, 1]" if allow_one else "[0, 1)"
        raise ConfigError(f"{field}={value!r} is out of range; allowed: a float in {allowed}")
    return v


def sparsity_from_density(density: float) -> float:
    """GraNet/RigL density (fraction kept) -> sparsity."""
    return check_sparsity(1.0 - float(density), "density", allow_one=True)


def density_from_sparsity(sparsity: float) -> float:
    return 1.0 - check_sparsity(sparsity, allow_one=True)


def sparsity_from_compression(compression: float) -> float:
    """DPaI / SynFlow compression ``c`` (density = 10**-c) -> sparsity. 2.0 -> 0.99."""
    c = float(compression)
    if math.isnan(c) or c < 0:
        raise ConfigError(f"compression={compression!r} is out of range; allowed: a float >= 0")
    return 1.0 - 10.0 ** (-c)


def compression_from_sparsity(sparsity: float) -> float:
    s = check_sparsity(sparsity)
    return -math.log10(1.0 - s)


def sparsity_from_keep_ratio(k: float) -> float:
    """BiP / Hydra keep ratio ``k`` (fraction of weights kept) -> sparsity."""
    k = float(k)
    if math.isnan(k) or not 0.0 < k <= 1.0:
        raise ConfigError(f"k={k!r} is out of range; allowed: a keep ratio in (0, 1]")
    return 1.0 - k


def keep_ratio_from_sparsity(sparsity: float) -> float:
    return 1.0 - check_sparsity(sparsity)
