"""Pruning methods, one file per family; each registers itself in ``METHODS``."""
from . import basic  # noqa: F401  (registers dense, random, magnitude)
from . import pai  # noqa: F401  (registers snip, grasp, synflow, iter_snip, prospr)
from . import dpai  # noqa: F401  (registers dpai)
from . import npb, phew  # noqa: F401  (registers npb, phew)
from . import lap  # noqa: F401
from . import hydra  # noqa: F401  (registers hydra)
from . import bip  # noqa: F401  (registers bip)
from . import imp  # noqa: F401  (registers imp)
from . import dst, gmp  # noqa: F401  (registers set, rigl; gmp, granet, granet_uniform)
from . import structured  # noqa: F401  (registers structured)
from .base import MethodConfig, PruneContext, Pruner
from .registry import METHODS, MethodSettings, create, method_config, method_schedule, method_section

__all__ = ["METHODS", "MethodConfig", "MethodSettings", "PruneContext", "Pruner", "create", "method_config",
           "method_schedule", "method_section"]
