"""Pruning methods, one file per family; each registers itself in ``METHODS``."""
from . import basic  # noqa: F401  (registers dense, random, magnitude)
from .base import MethodConfig, PruneContext, Pruner
from .registry import METHODS, create, method_config

__all__ = ["METHODS", "MethodConfig", "PruneContext", "Pruner", "create", "method_config"]
