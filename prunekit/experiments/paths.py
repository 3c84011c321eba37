"""Path parts that come from user input stay inside the folder they belong to, and output locations are
checked before anything is written.

A recipe ``name`` becomes one folder under ``output.root`` (so it may not hold a separator, ``..``, start
with the ``_`` of prunekit's cache folders, or exceed a file-name length); a run directory must resolve
inside ``output.root`` (no symbolic link leading out); an output folder (``output.root``, ``--out``) must
be a folder or creatable as one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ConfigError, OutputError

MAX_NAME = 100
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+=-]{{0,{MAX_NAME - 1}}}")
NAME_RULE = (f"1 to {MAX_NAME} letters, digits, '.', '_', '-', '+' or '=', starting with a letter or digit "
             "(one folder name under output.root)")


def check_name(name: str) -> str:
    """``name`` when it is a safe single folder name, else ValueError naming the rule (for pydantic)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"allowed: {NAME_RULE}")
    return name


def check_inside(root: str | os.PathLike, path: str | os.PathLike, what: str) -> Path:
    """``path`` when it resolves inside ``root`` (symbolic links followed), else ConfigError."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise ConfigError(f"{what} {path} resolves to {path_r}, outside {root_r}; allowed: a folder inside it "
                          f"(no symbolic link leading out)")
    return Path(path)


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` when it is a folder or can be created as one (its first existing ancestor is a folder);
    OutputError naming ``what`` (``output.root``, ``--out`` ...) otherwise. Writes nothing."""
    path = Path(path)
    if str(path) == "" or "\x00" in str(path):
        raise OutputError(f"{what} {str(path)!r}: not a path; allowed: a folder")
    try:
        return _check_dir(path, what)
    except OSError as e:  # a name too long, a loop of links ...
        raise OutputError(f"{what} {path}: {e.strerror}; allowed: a folder") from None


def _check_dir(path: Path, what: str) -> Path:
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            raise OutputError(f"{what} {path}: {p} is a dangling symbolic link (to {os.readlink(p)}); allowed: a "
                              f"folder, or a link to one")
        if p.exists():
            if not p.is_dir():
                kind = "is a file" if p == path else f"is inside {p}, a file"
                raise OutputError(f"{what} {path} {kind}; allowed: a folder (existing or new)")
            if not os.access(p, os.W_OK | os.X_OK):
                raise OutputError(f"{what} {path}: {p} is not writable; allowed: a folder you can write to")
            return path
    return path
