"""A user's own models and datasets: ``"package.module:factory"`` import paths and entry points.

A recipe names a model or dataset prunekit does not ship by import path (``model: {name:
"mypkg.nets:resnet_tiny", kwargs: {...}}``), or an installed package declares it under the entry-point
groups ``prunekit.models`` / ``prunekit.datasets`` and the recipe uses the entry point's name.
"""
from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError


def is_import_path(name: str) -> bool:
    """``"package.module:attribute"``: a module path, a colon, a dotted attribute."""
    module, sep, attr = str(name).partition(":")
    return bool(sep) and bool(module) and bool(attr) and all(p.isidentifier() for p in module.split(".") + attr.split("."))


def load_object(path: str, what: str) -> Any:
    """The object at import path ``path``; one-line :class:`ConfigError` when it cannot be imported."""
    if not is_import_path(path):
        raise ConfigError(f"{what}={path!r} is not an import path; allowed: 'package.module:factory'")
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = _import(module_name)
    except ImportError as e:
        raise ConfigError(f"{what}={path!r}: module {module_name!r} cannot be imported ({e}); allowed: a module "
                          "on the Python path") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what}={path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what}={path!r} is a {type(obj).__name__}, not a factory; allowed: a callable")
    return obj


def _import(module_name: str) -> Any:
    """Import ``module_name``; a module in the current folder is found too (as ``python -m`` would),
    since the ``prunekit`` script does not put the working directory on the path."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != module_name.split(".")[0] or cwd in sys.path:
            raise
        sys.path.insert(0, cwd)
        return importlib.import_module(module_name)


def entry_point(group: str, name: str) -> Any | None:
    """The object an installed package registers as ``name`` in entry-point ``group``, or ``None``."""
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    return None
