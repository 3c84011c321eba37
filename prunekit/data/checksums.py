"""File checksums (md5 / sha256) and their verification."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import DataError

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    return h.hexdigest()


def verify_file(path: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise :class:`DataError` unless ``path`` exists and matches every checksum given."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            got = file_digest(p, algorithm)
            if got != expected.lower():
                raise DataError(f"{p}: {algorithm} checksum mismatch: expected {expected}, got {got}")
