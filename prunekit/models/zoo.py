"""The model registry and the checks every builder shares.

Each builder is a function ``builder(num_classes, **options) -> nn.Module`` registered in :data:`MODELS`
with metadata: ``family``, ``source`` (the reference repository file whose definition it follows),
``paper``, ``input_shape`` (default C, H, W), ``num_classes`` (default) and ``init`` (the weight
initialisation, because the references differ there more than in architecture).
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..plugins import entry_point, is_import_path, load_object
from ..registry import Registry, suggest
from .huggingface import hf_builder

MODELS: Registry = Registry("model")

_POSITIVE_INT_OPTIONS = ("in_channels", "input_size", "in_features")


def names() -> list[str]:
    """Registered model names, in registration order."""
    return MODELS.names()


def builder(name: str) -> Any:
    """The builder of ``name``: a registered model, a ``"package.module:factory"`` import path, an
    ``"hf:<ArchitectureClass>"`` Hugging Face architecture, or an entry point of group ``prunekit.models``."""
    if name in MODELS:
        return MODELS.get(name)
    if name.startswith("hf:"):
        return hf_builder(name[3:])
    if is_import_path(name):
        return load_object(name, "model.name")
    found = entry_point("prunekit.models", name)
    return found if found is not None else MODELS.get(name)  # the registry's "did you mean" error


def _meta(name: str) -> dict[str, Any]:
    return MODELS.meta(name) if name in MODELS else {"family": "user", "source": name, "num_classes": None}


def options(name: str) -> dict[str, Any]:
    """``{option: default}`` accepted by model ``name`` besides ``num_classes``."""
    params = inspect.signature(builder(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {k: p.default for k, p in params.items() if k != "num_classes" and p.kind is not p.VAR_KEYWORD
                } | {"**": None}
    return {k: p.default for k, p in params.items() if k != "num_classes"}


def info(name: str) -> dict[str, Any]:
    """Metadata of model ``name``: source, paper, family, input_shape, num_classes, init, options."""
    meta = dict(_meta(name))
    meta["name"] = name
    meta["options"] = options(name)
    return meta


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs (``None``: the model's default).

    Options other than ``num_classes`` are model specific (``info(name)["options"]``); an unknown one
    raises :class:`~prunekit.errors.ConfigError` naming it and the allowed ones. An option given as
    ``None`` takes the model's default, so a config can pass ``in_channels: null`` to any model.
    """
    build = builder(name)
    allowed = options(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for key in kwargs:
        if key not in allowed and "**" not in allowed:
            raise ConfigError(
                f"model {name!r} has no option {key!r}{suggest(key, list(allowed))}; "
                f"allowed: num_classes, {', '.join(allowed)}"
            )
    if num_classes is None:
        num_classes = _meta(name)["num_classes"]
    for key in _POSITIVE_INT_OPTIONS:
        if key in kwargs:
            check_positive_int(f"{name}: {key}", kwargs[key])
    takes_classes = "num_classes" in inspect.signature(build).parameters
    if num_classes is None or not takes_classes:
        if name in MODELS:
            check_positive_int(f"{name}: num_classes", num_classes)
        model = build(**kwargs)
    else:
        check_positive_int(f"{name}: num_classes", num_classes)
        model = build(num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} built a {type(model).__name__}; allowed: a factory returning an nn.Module")
    return model


def check_positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field}={value!r} is not allowed; allowed: a positive integer")
    return value


def check_size(model: str, input_size: int, allowed: str, ok: bool) -> None:
    """Raise ConfigError for an ``input_size`` the architecture cannot take."""
    if not ok:
        raise ConfigError(f"{model}: input_size={input_size!r} is not allowed; allowed: {allowed}")
