"""Error hierarchy.

Every mistake a user can make (a config key, a data file, a checkpoint) raises a :class:`PrunekitError`
subclass whose message names the field or file, the value, and what is allowed. The CLI prints the
message on one line and exits with status 2; nothing else escapes as a traceback for user input.
"""
from __future__ import annotations


class PrunekitError(Exception):
    """Base class of all user-facing errors. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(PrunekitError, ValueError):
    """A configuration value, CLI argument or API argument is not allowed."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup (method, model, dataset, recipe ...) failed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(PrunekitError):
    """A dataset file is missing, malformed, truncated or fails its checksum."""


class MaskError(PrunekitError):
    """Masks do not fit a model (names, shapes) or violate a structural constraint."""


class CheckpointError(PrunekitError):
    """A checkpoint or mask file cannot be loaded safely."""


class PackError(ConfigError):
    """Runs that cannot train packed (``--pack``): the method, setting or combination, and why."""


class StoreError(PrunekitError):
    """A results store is not one prunekit wrote, is damaged, or is of a newer schema version."""


class RunDirError(PrunekitError):
    """A file of a run directory (or of a shared cache) is damaged or was changed by hand."""


class OutputError(PrunekitError):
    """An output location cannot be written: not a folder, a dangling link, or the disk is full."""


class NumericError(PrunekitError):
    """Training produced NaN/Inf values."""


class ModelError(PrunekitError):
    """A model (its layers, outputs or inputs) is outside what a method or setting supports."""


class LayerCollapseError(MaskError):
    """A mask disconnects the network (a layer keeps no effective weight)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
