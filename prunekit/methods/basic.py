"""Baselines every paper uses: dense training, random pruning and magnitude pruning.

* ``dense`` — no pruning (the reference accuracy of every table).
* ``random`` — random masks at initialization with uniform or ERK per-layer budgets (the "random" and
  "random-ERK" PaI baselines: Liu et al. 2022, "The unreasonable effectiveness of random pruning";
  ERK from Evci et al. 2020). Exact per-layer counts by default; ``bernoulli=True`` samples each weight
  independently as GraNet's ``Masking.init`` does (density only approximately met).
* ``magnitude`` — keep the largest |w|: at initialization, or after training followed by fine-tuning
  (one-shot magnitude pruning, OMP: Han et al. 2015; the OMP baseline of BiP and LTH papers). Global
  (one threshold, the open_lth/BiP default) or per-layer budgets (uniform, ERK).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..sparsity import allocate, select
from .base import ALLOCATION_HELP, STRUCTURE_HELP, Allocation, MethodConfig, PruneContext, Pruner, Structure
from .registry import METHODS


@METHODS.register("dense", family="baseline")
class Dense(Pruner):
    """No pruning: masks stay all-ones."""

    name = "dense"

    schedule = "none"

    def after_optimizer_step(self, step: int) -> None:
        pass  # nothing is masked


class RandomConfig(MethodConfig):
    allocations = ("uniform", "erk", "er", "custom")
    structures = ("unstructured", "N:M")

    allocation: Allocation = Field("uniform", description=ALLOCATION_HELP)
    structure: Structure = Field("unstructured", description=STRUCTURE_HELP)
    bernoulli: bool = Field(False, description="sample each weight with its layer's density (GraNet's "
                            "Masking.init; the density only approximately met) instead of exact counts")
    seed: int | None = Field(None, description="the random scores or draws; None: a seed from the global RNG "
                             "(the experiment seed)")

    @model_validator(mode="after")
    def _bernoulli_unstructured(self) -> "RandomConfig":
        if self.bernoulli and self.structure != "unstructured":
            raise ValueError(f"bernoulli=True samples single weights; allowed with structure='unstructured', "
                             f"not {self.structure!r}")
        return self


@METHODS.register("random", family="pai")
class RandomPruning(Pruner):
    """Random masks at initialization with per-layer budgets (uniform, ERK or ER)."""

    Config = RandomConfig
    name = "random"
    config: RandomConfig

    schedule = "init"

    def on_init(self, ctx: PruneContext | None = None) -> None:
        self.prune(ctx)

    def prune(self, ctx: PruneContext | None = None):
        cfg = self.config
        gen = torch.Generator()
        gen.manual_seed(cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        params = dict(zip(self.masks.names(), self.masks.params))
        if cfg.bernoulli:
            shapes = {n: tuple(p.shape) for n, p in params.items()}
            sparsities = allocate(cfg.allocation, shapes, self.target_sparsity())
            new = {n: torch.rand(p.shape, generator=gen) < 1.0 - sparsities[n] for n, p in params.items()}
        else:
            scores = {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}
            new = select(scores, sparsity=self.target_sparsity(), allocation=cfg.allocation, structure=cfg.structure)
        self.masks.update_(new)
        self.enforce()
        return self.masks


class MagnitudeConfig(MethodConfig):
    allocations = ("global", "uniform", "erk", "er", "custom")
    structures = ("unstructured", "N:M")

    allocation: Allocation = Field("global", description=ALLOCATION_HELP)
    structure: Structure = Field("unstructured", description=STRUCTURE_HELP)
    when: Literal["init", "after"] = Field("after", description="prune before training, or after dense "
                                           "pretraining followed by fine-tuning (OMP)")


@METHODS.register("magnitude", family="post-training")
class MagnitudePruning(Pruner):
    """Keep the largest-magnitude weights; ``when="after"`` + fine-tune is OMP."""

    Config = MagnitudeConfig
    name = "magnitude"
    config: MagnitudeConfig

    @classmethod
    def schedule_for(cls, config: MagnitudeConfig) -> str:
        return config.when

    def on_init(self, ctx: PruneContext | None = None) -> None:
        if self.config.when == "init":
            self.prune(ctx)

    def prune(self, ctx: PruneContext | None = None):
        cfg = self.config
        scores = {n: p.detach().abs() for n, p in zip(self.masks.names(), self.masks.params)}
        # already-pruned weights stay pruned (they are zero, so they rank last anyway)
        self.masks.update_(select(scores, sparsity=self.target_sparsity(), allocation=cfg.allocation,
                                  structure=cfg.structure))
        self.enforce()
        return self.masks
