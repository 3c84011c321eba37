"""The method registry and ``create``: one file per method family registers its classes here."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from torch import nn

from ..modelio import LossFn, ModelIO, OutputFn
from ..registry import Registry
from ..utils.validation import config_error_from
from .base import MethodConfig, Pruner

METHODS: Registry[type[Pruner]] = Registry("method")


def method_config(settings: dict[str, Any]) -> MethodConfig:
    """Validate ``settings`` (with ``name``) against the named method's Config."""
    settings = dict(settings)
    if "name" not in settings:
        from ..errors import ConfigError

        raise ConfigError("method.name is missing; allowed: " + ", ".join(METHODS.names()))
    cls = METHODS.get(settings["name"])
    try:
        return cls.Config(**settings)
    except ValidationError as e:
        raise config_error_from(e, cls.Config, prefix="method") from None


def create(name: str, model: nn.Module, *, loss_fn: LossFn | None = None, output_fn: OutputFn | None = None,
           **settings: Any) -> Pruner:
    """Build a pruner for ``model``: ``prunekit.create("magnitude", model, sparsity=0.9)``.

    ``settings`` are the method's (``prunekit list methods NAME``); an unknown one is refused with a
    suggestion. ``loss_fn(logits, target)`` and ``output_fn(model_output) -> logits`` replace the
    defaults of :mod:`prunekit.modelio` wherever the method computes a loss or reads the output.
    """
    cfg = method_config({"name": name, **settings})
    pruner = METHODS.get(name)(model, cfg)
    pruner.io = ModelIO(output_fn, loss_fn)
    return pruner
