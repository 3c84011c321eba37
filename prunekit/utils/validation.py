"""Turning pydantic validation errors into one-line ConfigErrors with suggestions."""
from __future__ import annotations

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ..errors import ConfigError
from ..registry import suggest


def _keys(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """``{key a user writes: field}``: a field's alias where it has one."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Keys allowed at ``loc`` (walking nested pydantic models)."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in _keys(current):
            return []
        ann = _keys(current)[part].annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if current is None:
            for arg in getattr(ann, "__args__", ()):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    current = arg
    return list(_keys(current)) if current is not None else []


def config_error_from(err: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """The first validation error as ``field: problem (did you mean ...)``."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc)
        return ConfigError(
            f"unknown key {field!r}{suggest(str(loc[-1]), allowed)}; allowed: {', '.join(allowed)}"
        )
    value = first.get("input")
    message = first["msg"].removeprefix("Value error, ")
    if message.startswith((f"{field}.", f"{field}=")):  # a nested section's own error already names the field
        return ConfigError(message)
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return ConfigError(f"{field}{shown}: {message}")
