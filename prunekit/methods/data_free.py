"""Shared scaffolding of the data-free pruning-at-initialization methods that need only an input shape
(``phew``, ``npb``): the settings every one of them takes and a seed fixed when the pruner is built."""
from __future__ import annotations

import torch
from pydantic import model_validator
from torch import nn

from .base import MethodConfig, PruneContext, Pruner
from .pai import compression_to_sparsity


class DataFreeConfig(MethodConfig):
    compression: float | None = None  # density = 10**-compression; sets sparsity
    seed: int | None = None  # the method's randomness; None: drawn from the global RNG when the pruner is built
    input_shape: tuple[int, ...] | None = None  # None: one sample of ctx.batches

    @model_validator(mode="before")
    @classmethod
    def _compression_to_sparsity(cls, data):
        return compression_to_sparsity(data)


class DataFreePruner(Pruner):
    """Prunes once before training (``on_init``); ``generator()`` is seeded by ``config.seed`` or by a seed
    drawn at construction, so a seeded model build fixes the mask even if the global RNG is used between
    construction and pruning."""

    config: DataFreeConfig
    schedule = "init"

    def __init__(self, model: nn.Module, config: DataFreeConfig):
        super().__init__(model, config)
        self._seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())

    def on_init(self, ctx: PruneContext | None = None) -> None:
        self.prune(ctx)

    def generator(self) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(self._seed)
        return gen
