"""Gradual magnitude pruning: GMP and GraNet (GMP with zero-cost neuroregeneration).

* ``gmp`` — Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression" (2017): every ``update_frequency`` steps between the initial and the final pruning epoch,
  prune to the cubic sparsity ``s_k`` by magnitude. As GraNet's code runs it (``Masking.pruning``,
  ``--method GMP``): one global threshold; ``allocation: uniform`` is ``GMP_uniform``
  (``Masking.pruning_uniform``: once ``s_k >= 0.8`` the classifier keeps 20% density and the other
  layers share the rest); ``allocation: erk`` follows ERK budgets at ``s_k`` (a prunekit option).
* ``granet`` — Liu et al., "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration"
  (NeurIPS 2021), ``Shiweiliuiiiiiii/GraNet`` ``CIFAR/sparselearning/core.py`` ``Masking``: from a dense
  (``initial_sparsity: 0``) or an ERK-sampled sparse start, every dT steps after ``t0``: magnitude
  pruning to the cubic ``s_k`` (global), then per-layer zero-cost neuroregeneration
  (``truncate_weights``): drop ``ceil(rho_t * nnz)`` smallest |w|, regrow as many inactive weights with
  the largest dense |grad|; ``rho_t`` cosine from ``prune_rate`` to 0.005 over the whole run;
  regeneration continues after the last pruning step. ``granet_uniform`` prunes layer-wise.

``counting`` chooses between prunekit's exact counts (default) and GraNet's code (``reference``):

* ``exact``: a pruning step at sparsity ``s`` keeps exactly ``N - int(s * N)`` weights (per layer for
  layer-wise allocations), ties broken by the lower index; pruning never revives; the cubic schedule
  adds a last step at ``k_end`` so training ends exactly at the target;
* ``reference``: the global step keeps ``|w| > t`` with ``t`` the ``int(N (1 - s))``-th largest |w|
  (one weight fewer survives when there are no ties, methods.md section 7); the layer-wise step keeps
  ``|w| >= t`` (zero-valued entries revive when a layer has fewer non-zeros than its budget); the
  regeneration drops ``|w| <=`` the ``(zeros + drop)``-th smallest |w| (ties too); the schedules end as
  in the code (global: ``k_end - 1``; uniform: fractional ``k`` bounds, inclusive).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..sparsity import CosineDecay, CubicSchedule, select
from .base import ALLOCATION_HELP, Allocation
from .dst import SparseTraining, SparseTrainingConfig, gradient_scores
from .registry import METHODS


class GradualConfig(SparseTrainingConfig):
    """Cubic gradual pruning (Zhu & Gupta 2017) in GraNet's units: epochs for the window, steps for dT."""

    allocations = ("global", "uniform", "erk")

    allocation: Allocation = Field(
        "global", description="how each pruning step's sparsity s_k is spread: one global threshold, the same "
        "per layer (with the classifier rule below), or ERK budgets")
    initial_sparsity: float = Field(0.0, description="sparsity at the start (0: dense-to-sparse)")
    init_prune_epoch: float = Field(0.0, description="epoch of the first gradual pruning step")
    final_prune_epoch: float | None = Field(None, description="epoch of the last pruning step; None: half of "
                                            "training (GraNet's scripts: 80 of 160)")
    counting: Literal["exact", "reference"] = Field(
        "exact", description="exact: N - int(s N) kept per step, ending at the target; reference: GraNet's "
        "code (thresholds, one weight fewer, the last step at k_end - 1)")
    classifier: str | None = Field("last", description="layer(s) kept at classifier_density by the uniform "
                                   "allocation once s_k >= 0.8 (a glob, or 'last')")
    classifier_density: float = Field(0.2, description="density of those classifier layers")

    @field_validator("initial_sparsity", "classifier_density")
    @classmethod
    def _in_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("allowed: a float in [0, 1)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "GradualConfig":
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity={self.initial_sparsity} is above sparsity={self.sparsity}")
        final = self.final_prune_epoch
        if self.init_prune_epoch < 0 or (final is not None and final < self.init_prune_epoch):
            raise ValueError("need 0 <= init_prune_epoch <= final_prune_epoch")
        return self


class Gradual(SparseTraining):
    """Cubic gradual magnitude pruning (shared by ``gmp`` and ``granet``)."""

    config: GradualConfig
    default_optimizer_state = "mask"  # GraNet Masking.apply_mask: momentum masked every step

    def _size_schedules(self) -> None:
        cfg = self.config
        spe = self.steps_per_epoch
        if not spe:
            if cfg.init_prune_epoch or cfg.final_prune_epoch is not None:
                raise ConfigError(f"{self.name}: prune epochs need steps_per_epoch (PruneContext or setting)")
            spe = 1
        self.start_step = int(cfg.init_prune_epoch * spe)
        self.end_step = int(cfg.final_prune_epoch * spe) if cfg.final_prune_epoch is not None else self.total_steps // 2
        if self.end_step > self.total_steps:
            raise ConfigError(f"{self.name}: final_prune_epoch={cfg.final_prune_epoch} is after the end of training "
                              f"({self.total_steps} steps)")
        self.cubic = CubicSchedule(cfg.initial_sparsity, cfg.sparsity, self.start_step, self.end_step,
                                   cfg.update_frequency, reach_final=cfg.counting == "exact")
        last = self.cubic.k_end if cfg.counting == "exact" else self.cubic.k_end - 1
        if cfg.sparsity > cfg.initial_sparsity and (self.cubic.k_end == self.cubic.k0 or last < max(self.cubic.k0, 1)):
            raise ConfigError(
                f"{self.name}: update_frequency={cfg.update_frequency} leaves no pruning step between step "
                f"{self.start_step} and {self.end_step}; allowed: a smaller update_frequency or a longer window")

    def sparsity_at(self, step: int) -> float | None:
        """Target sparsity of the pruning step at ``step`` (None: no pruning there)."""
        self._ensure_ready()
        cfg = self.config
        if cfg.counting == "exact" or cfg.allocation == "global":
            return self.cubic.sparsity_at(step)
        # Masking.pruning_uniform: fractional k bounds, last step included
        if not self.cubic.is_update_step(step):
            return None
        dt = cfg.update_frequency
        k, k0, k_end = step // dt, self.start_step / dt, self.end_step / dt
        if not k0 <= k <= k_end or k_end == k0:
            return None
        decay = (1.0 - (k - k0) / (k_end - k0)) ** 3
        return cfg.initial_sparsity + (cfg.sparsity - cfg.initial_sparsity) * (1.0 - decay)

    def _final_masks(self) -> None:
        self.magnitude_prune_(self.config.sparsity)

    def _classifiers(self) -> list[str]:
        pattern = self.config.classifier
        if pattern is None:
            return []
        names = self.masks.names()
        return names[-1:] if pattern == "last" else [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def step_allocation(self, sparsity: float):
        """The allocation of a pruning step at overall ``sparsity``: the configured one, except that
        ``uniform`` is GraNet's ``pruning_uniform`` (once ``s_k >= 0.8`` the classifier keeps
        ``classifier_density`` and the other layers share the rest), as a per-layer map."""
        cfg = self.config
        if cfg.allocation != "uniform":
            return cfg.allocation
        shapes = {n: tuple(m.shape) for n, m in self.masks.items()}
        out = dict.fromkeys(shapes, sparsity)
        heads = self._classifiers()
        total = sum(math.prod(s) for s in shapes.values())
        fc = sum(math.prod(shapes[n]) for n in heads)
        if sparsity >= 0.8 and 0 < fc < total:
            rest = 1.0 - (total * (1.0 - sparsity) - cfg.classifier_density * fc) / (total - fc)
            out = {n: 1.0 - cfg.classifier_density if n in heads else rest for n in shapes}
        return {n: min(max(round(s, 12), 0.0), 1.0) for n, s in out.items()}

    @torch.no_grad()
    def magnitude_prune_(self, sparsity: float) -> None:
        """One pruning step: keep the largest |w| at ``sparsity``. Pruning never grows a mask in ``exact``
        counting (a layer already below its budget keeps what it has); ``reference`` is GraNet's rule."""
        cfg = self.config
        names = self.masks.names()
        scores = {n: p.detach().abs() for n, p in zip(names, self.masks.params)}
        allocation = self.step_allocation(sparsity)
        if cfg.counting == "exact" and allocation == "global":
            sparsity = round(sparsity, 12)  # 0.9 from the cubic schedule must keep int-exact 10 %
        new = select(scores, self.masks, sparsity=sparsity, allocation=allocation, counting=cfg.counting,
                     eligible_counts=dict(zip(names, self._nnz)))
        for n, m in self.masks.items():
            m.copy_(new[n])


@METHODS.register("gmp", family="dst")
class GMP(Gradual):
    """Gradual magnitude pruning (Zhu & Gupta 2017) from a dense start, as GraNet's ``--method GMP``
    (global) / ``GMP_uniform`` (``allocation: uniform``)."""

    Config = GradualConfig
    name = "gmp"

    def _is_update(self, step: int) -> bool:
        return self.cubic.is_update_step(step)

    def _update(self, step: int) -> None:
        sparsity = self.sparsity_at(step)
        if sparsity is None:
            return
        self.magnitude_prune_(sparsity)
        self.enforce()
        self._record_change(step, dense_grad=False)


# --- GraNet ---------------------------------------------------------------------------------------
class GraNetConfig(GradualConfig):
    initial_sparsity: float = Field(0.5, description="1 - --init-density: the sparse start (0.5, the argparse "
                                    "default; 0 = dense-to-sparse)")
    prune_rate: float = Field(0.5, description="rho_0 of the neuroregeneration: the fraction of each layer's "
                              "weights dropped and regrown, cosine-decayed (--prune-rate)")
    prune_rate_min: float = Field(0.005, description="the cosine decay's floor of the regeneration rate (eta_min)")
    growth: Literal["gradient", "random"] = Field("gradient", description="regrow the inactive weights with the "
                                                  "largest dense |gradient| (GraNet) or at random")
    init_allocation: Literal["erk", "uniform"] = Field("erk", description="per-layer densities of the sparse "
                                                       "start (--sparse-init)")
    init_bernoulli: bool = Field(True, description="sample the start mask per weight (the reference's "
                                 "rand < density_l); False: exact per-layer counts")

    @field_validator("prune_rate", "prune_rate_min")
    @classmethod
    def _rate(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("allowed: a float in [0, 1]")
        return v


class GraNetUniformConfig(GraNetConfig):
    allocation: Allocation = Field("uniform", description=ALLOCATION_HELP)


@METHODS.register("granet", family="dst")
class GraNet(Gradual):
    """GraNet: gradual global magnitude pruning + zero-cost neuroregeneration (gradient growth)."""

    Config = GraNetConfig
    name = "granet"
    config: GraNetConfig

    def _size_schedules(self) -> None:
        super()._size_schedules()
        self.decay = CosineDecay(self.config.prune_rate, max(1, self.total_steps), self.config.prune_rate_min)

    def prune_rate_at(self, step: int) -> float:
        """rho_t = eta_min + (rho_0 - eta_min) (1 + cos(pi t / T)) / 2 (CosineAnnealingLR per step)."""
        self._ensure_ready()
        return self.decay.value(step)

    def _initial_masks(self) -> None:
        cfg = self.config
        if cfg.initial_sparsity > 0.0:
            self._random_masks_(cfg.initial_sparsity, cfg.init_allocation, cfg.init_bernoulli)

    def _is_update(self, step: int) -> bool:
        return step >= self.start_step and step > 0 and step % self.config.update_frequency == 0

    def _update(self, step: int) -> None:
        cfg = self.config
        before = list(self._nnz)
        sparsity = self.sparsity_at(step)
        if sparsity is not None:
            self.magnitude_prune_(sparsity)
            self.enforce()
            self._nnz = self._counts()
        after = list(self._nnz)  # regeneration conserves every layer's count
        self.drop_and_grow_(self.prune_rate_at(step), step, round_up=True, reference=cfg.counting == "reference")
        self.enforce()
        self._record_change(step, dense_grad=self.grows_by_gradient, before=before, after=after)

    @property
    def grows_by_gradient(self) -> bool:  # type: ignore[override]
        return self.config.growth == "gradient"

    def grow_scores(self, name: str, p: torch.Tensor, step: int, rng) -> torch.Tensor:
        if self.grows_by_gradient:
            return gradient_scores(self, name, p, step)
        return super().grow_scores(name, p, step, rng)


@METHODS.register("granet_uniform", family="dst")
class GraNetUniform(GraNet):
    """GraNet with layer-wise uniform pruning (``--method GraNet_uniform``)."""

    Config = GraNetUniformConfig
    name = "granet_uniform"
