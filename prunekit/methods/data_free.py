"""Shared scaffolding of the data-free pruning-at-initialization methods that need only an input shape
(``phew``, ``npb``): the settings every one of them takes and a seed fixed when the pruner is built."""
from __future__ import annotations

from .base import InitPruner, MethodConfig


class DataFreeConfig(MethodConfig):
    seed: int | None = None  # the method's randomness; None: drawn from the global RNG when the pruner is built
    input_shape: tuple[int, ...] | None = None  # None: one sample of ctx.batches


class DataFreePruner(InitPruner):
    """Base of ``phew`` and ``npb``: prunes once before training from an input shape, seeded as
    :class:`prunekit.methods.base.InitPruner`."""

    config: DataFreeConfig
