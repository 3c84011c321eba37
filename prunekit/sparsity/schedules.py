"""Sparsity and rate schedules.

* :func:`geometric_sparsity` — IMP levels: keep ``keep_per_level`` of the survivors per level
  (Frankle & Carbin 2019; open_lth prunes 20% per level).
* :func:`lap_layer_sparsity` / :func:`lap_remaining` — LAP rounds: a layer pruned at per-round rate
  ``r`` for ``t`` rounds has sparsity ``1 - (1 - r) ** t`` (lookahead_pruning ``main.py``, one-shot mode).
* :class:`CubicSchedule` — gradual pruning (Zhu & Gupta 2017) exactly as GraNet
  ``Masking.pruning``: ``k = floor(t / dT)``; pruning happens for ``k0 <= k <= k_end - 1`` with
  ``s_k = s_i + (s_f - s_i) * (1 - (1 - (k - k0) / (k_end - k0)) ** 3)``. Note that the last pruning
  step uses ``k = k_end - 1``, so the reference never quite reaches ``s_f`` (e.g. 10 pruning steps to
  95% from 50% end at 94.95%); ``reach_final=True`` adds the step at ``k_end``.
* :class:`CosineDecay` — GraNet's drop/regrowth rate: ``rho_t = eta_min + (rho_0 - eta_min) *
  (1 + cos(pi * t / T)) / 2`` with ``eta_min = 0.005`` (``CosineAnnealingLR`` stepped every iteration).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError
from .units import check_sparsity


def geometric_sparsity(level: int, keep_per_level: float = 0.8) -> float:
    """Sparsity after ``level`` IMP levels that each keep ``keep_per_level`` of the survivors."""
    if level < 0:
        raise ConfigError(f"level={level} must be >= 0")
    if not 0.0 < keep_per_level < 1.0:
        raise ConfigError(f"keep_per_level={keep_per_level} must be in (0, 1)")
    return 1.0 - keep_per_level**level


def lap_layer_sparsity(rate: float, rounds: int) -> float:
    """Per-layer sparsity after ``rounds`` LAP rounds at per-round rate ``rate``: 1 - (1 - r)^t."""
    return 1.0 - (1.0 - rate) ** rounds


def lap_remaining(numels: Sequence[int], rates: Sequence[float], rounds: int, rounding: str = "round") -> float:
    """Fraction of weights remaining after ``rounds`` rounds, counted as the reference does: every round
    keeps ``round((1 - r) * surviving)`` of each layer (``rounding="round"``), or from the closed form
    (``rounding="none"``)."""
    if len(numels) != len(rates):
        raise ConfigError(f"{len(rates)} LAP rates given for {len(numels)} layers")
    total = sum(numels)
    kept = 0.0
    for n, r in zip(numels, rates):
        if rounding == "none":
            kept += n * (1.0 - r) ** rounds
            continue
        surviving = n
        for _ in range(rounds):
            surviving = round((1.0 - r) * surviving)
        kept += surviving
    return kept / total


@dataclass(frozen=True)
class CubicSchedule:
    """GraNet/GMP gradual pruning schedule, in optimizer steps.

    ``start_step`` = ``init_prune_epoch * iters_per_epoch * multiplier``, ``end_step`` likewise with
    ``final_prune_epoch``; ``frequency`` = ``update_frequency`` (dT).
    """

    initial_sparsity: float
    final_sparsity: float
    start_step: int
    end_step: int
    frequency: int
    reach_final: bool = False

    def __post_init__(self) -> None:
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        check_sparsity(self.final_sparsity, "final_sparsity")
        if self.frequency <= 0:
            raise ConfigError(f"update_frequency={self.frequency} must be > 0")
        if self.end_step < self.start_step:
            raise ConfigError(f"final prune step {self.end_step} is before the initial prune step {self.start_step}")

    @property
    def k0(self) -> int:
        return self.start_step // self.frequency

    @property
    def k_end(self) -> int:
        return self.end_step // self.frequency

    def is_update_step(self, step: int) -> bool:
        """GraNet updates at steps t >= t0 with t % dT == 0 (t counted from 1 after the first step)."""
        return step >= self.start_step and step > 0 and step % self.frequency == 0

    def sparsity_at(self, step: int) -> float | None:
        """Target sparsity of the pruning step at ``step``, or None when no pruning happens there."""
        if not self.is_update_step(step):
            return None
        k, k0, k_end = step // self.frequency, self.k0, self.k_end
        last = k_end if self.reach_final else k_end - 1
        if not k0 <= k <= last or k_end == k0:
            return None
        decay = (1.0 - (k - k0) / (k_end - k0)) ** 3
        return self.initial_sparsity + (self.final_sparsity - self.initial_sparsity) * (1.0 - decay)


@dataclass(frozen=True)
class CosineDecay:
    """GraNet/RigL drop-fraction decay from ``initial`` to ``eta_min`` over ``total_steps``."""

    initial: float = 0.5
    total_steps: int = 1
    eta_min: float = 0.005

    def value(self, step: int) -> float:
        t = min(max(step, 0), self.total_steps)
        return self.eta_min + (self.initial - self.eta_min) * (1.0 + math.cos(math.pi * t / self.total_steps)) / 2.0
