"""The method registry and ``create``: one file per method family registers its classes here."""
from __future__ import annotations

import inspect
import re
import typing
from typing import Any

from pydantic import ValidationError
from torch import nn

from ..errors import ConfigError
from ..modelio import LossFn, ModelIO, OutputFn
from ..registry import Registry
from ..utils.validation import config_error_from
from .base import MethodConfig, Pruner

METHODS: Registry[type[Pruner]] = Registry("method")


def method_config(settings: dict[str, Any]) -> MethodConfig:
    """Validate ``settings`` (with ``name``) against the named method's Config."""
    settings = dict(settings)
    if "name" not in settings:
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


def method_settings(name: str) -> list[tuple[str, str, str, str]]:
    """``(setting, type, default, help)`` of every setting of method ``name``: the help is the setting's
    ``Field(description=...)``, else the comment beside its declaration in the method's source."""
    cls = METHODS.get(name).Config
    comments = _source_comments(cls)
    rows = []
    for field, info in cls.model_fields.items():
        kind = _type_name(info.annotation)
        default = "(required)" if info.is_required() else repr(info.default)
        rows.append((field, kind, default, info.description or comments.get(field, "")))
    return rows


def _type_name(annotation: Any) -> str:
    """``float``, ``int | None``, or the allowed values of a Literal (``'global' | 'uniform' | 'erk'``)."""
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _source_comments(cls: type) -> dict[str, str]:
    """``{setting: comment}`` from the ``name: type = default  # comment`` lines of ``cls`` and its bases
    (the nearest class wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, MethodConfig)):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+):[^\n=]*=[^\n#]*#\s*(.+)$", source, flags=re.M):
            out[m.group(1)] = m.group(2).strip()
    return out
