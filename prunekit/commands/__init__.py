"""Sub-commands beyond the core four (run, show, list, results), one module each.

Every module here defines ``register(subparsers)``, which adds its parser(s) with ``set_defaults(func=...)``;
``func(args) -> int`` raises :class:`prunekit.errors.PrunekitError` for user mistakes (one line, exit 2).
Modules are found by listing the package, so a new command is one new file.
"""
from __future__ import annotations

import importlib
import pkgutil


def register_all(subparsers) -> None:
    """Add every command module's parsers, in module-name order (stable ``--help``)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
