"""The method registry and ``create``: one file per method family registers its classes here."""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetPydanticSchema, ValidationError
from pydantic_core import core_schema
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


def method_section(settings: MethodConfig) -> dict[str, Any]:
    """The method section as written: ``name`` and the settings that differ from their defaults (what a
    run's hash and labels are made of)."""
    return settings.model_dump(exclude_defaults=True) | {"name": settings.name}


def _section_schema(_type: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    return core_schema.no_info_after_validator_function(
        method_config, handler.generate_schema(dict[str, Any]),
        serialization=core_schema.plain_serializer_function_ser_schema(method_section))


#: A config field holding a method section: a mapping validated once by :func:`method_config` into the
#: named method's own ``Config`` (a union over the registry tagged by ``name``, dispatched by lookup rather
#: than a static union because plugins register methods after import) and serialized back as
#: :func:`method_section`.
MethodSettings = Annotated[MethodConfig, GetPydanticSchema(_section_schema)]


def method_schedule(settings: dict[str, Any] | MethodConfig) -> str:
    """When the method of ``settings`` prunes (its lifecycle: none/init/during/after/iterative), from the
    validated settings, without a model: :meth:`Pruner.schedule_for`."""
    config = settings if isinstance(settings, MethodConfig) else method_config(settings)
    return METHODS.get(config.name).schedule_for(config)


def create(name: str, model: nn.Module, *, loss_fn: LossFn | None = None, output_fn: OutputFn | None = None,
           **settings: Any) -> Pruner:
    """Build a pruner for ``model``: ``prunekit.create("magnitude", model, sparsity=0.9)``.

    ``settings`` are the method's own, validated into ``METHODS.get(name).Config``: every one with its
    type, default and help is printed by ``prunekit list methods NAME`` and listed in ``docs/methods.md``;
    an unknown one is refused with a suggestion. ``loss_fn(logits, target)`` and
    ``output_fn(model_output) -> logits`` replace the defaults of :mod:`prunekit.modelio` wherever the
    method computes a loss or reads the output.
    """
    cfg = method_config({"name": name, **settings})
    pruner = METHODS.get(name)(model, cfg)
    pruner.io = ModelIO(output_fn, loss_fn)
    return pruner


def method_settings(name: str) -> list[tuple[str, str, str, str]]:
    """``(setting, type, default, help)`` of every setting of method ``name``; the help is the setting's
    ``Field(description=...)``."""
    cls = METHODS.get(name).Config
    rows = []
    for field, info in cls.model_fields.items():
        default = "(required)" if info.is_required() else repr(info.default)
        rows.append((field, _kinds(cls, field, info) or _type_name(info.annotation), default, info.description or ""))
    return rows


def _kinds(cls: type[MethodConfig], field: str, info: Any) -> str:
    """The accepted kinds of an ``allocation``/``structure`` setting (the Config's ``allocations`` /
    ``structures``), written like a Literal; "" for other settings."""
    kinds = {"allocation": cls.allocations, "structure": cls.structures}.get(field, ())
    if not kinds:
        return ""
    shown = ["{layer: sparsity}" if k == "custom" else repr(k) for k in kinds]
    return " | ".join(shown + (["None"] if info.default is None else []))


def _type_name(annotation: Any) -> str:
    """``float``, ``int | None``, ``tuple[int, ...]``, or the allowed values of a Literal
    (``'global' | 'uniform' | None``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
