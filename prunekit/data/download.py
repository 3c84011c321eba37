"""Opt-in downloads from the official URLs, verified by checksum and written atomically.

Nothing is downloaded unless :func:`download` is called. A file is streamed into a temporary file in
the destination folder while being hashed, fsynced, checked against its md5/sha256, and only then
renamed into place, so an interrupted or corrupted transfer never leaves a file that looks complete.
Only :mod:`urllib` is used.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..errors import ConfigError, DataError
from ..utils.io import fsync_dir
from . import specs
from .checksums import verify_file

_CHUNK = 1 << 20
USER_AGENT = "prunekit-data/0.1 (+urllib)"


def download_file(url: str, dest: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None,
                  timeout: float = 60.0, max_bytes: int | None = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically; raise :class:`DataError` (and leave nothing) on failure.

    The checksums given are verified before the file appears at ``dest``. ``max_bytes`` bounds the size.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashes = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    declared = response.headers.get("Content-Length")
                    n = 0
                    while chunk := response.read(_CHUNK):
                        n += len(chunk)
                        if max_bytes is not None and n > max_bytes:
                            raise DataError(f"{url}: more than {max_bytes} bytes; expected at most {max_bytes}")
                        for h in hashes.values():
                            h.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as e:
                raise DataError(f"{url}: download failed (HTTP {e.code} {e.reason})") from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise DataError(f"{url}: download failed ({reason})") from None
            if declared is not None and declared.isdigit() and int(declared) != n:
                raise DataError(f"{url}: truncated download: {n} of {declared} bytes")
            out.flush()
            os.fsync(out.fileno())
        for algorithm, expected in (("sha256", sha256), ("md5", md5)):
            if expected:
                got = hashes[algorithm].hexdigest()
                if got != expected.lower():
                    raise DataError(f"{url}: {algorithm} checksum mismatch for {dest.name}: expected {expected}, got {got}")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


def _safe_extract_zip(archive: Path, dest_dir: Path, top: str) -> Path:
    """Extract ``archive`` (which must hold only ``top/...``) to ``dest_dir/top`` via a temp folder + rename."""
    final = dest_dir / top
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", dir=dest_dir))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    parts = Path(info.filename).parts
                    if (not parts or parts[0] != top or info.filename.startswith("/") or ".." in parts):
                        raise DataError(f"{archive}: unexpected member {info.filename!r}; expected paths under {top}/")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{archive}: corrupt zip archive ({e})") from None
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / top, final)
        fsync_dir(dest_dir)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name: str, root: str | os.PathLike, *, mirror: str | None = None, timeout: float = 60.0,
             force: bool = False) -> list[Path]:
    """Download dataset ``name``'s official files into ``root/<name>/`` and verify them; returns the paths.

    Files already present with the right checksum are kept (``force=True`` re-downloads). ``mirror``
    replaces the base URL (a folder holding the same file names); checksums are still the official ones.
    Each URL of a file is tried in turn. ImageNet has no public download (registration required).
    """
    spec = specs.get_spec(name)
    if spec.no_download_reason:
        raise ConfigError(f"dataset {name!r} cannot be downloaded: {spec.no_download_reason}")
    folder = Path(root) / spec.name
    paths = []
    for f in spec.files:
        if not f.urls:  # checksum-only entries (extracted or uncompressed copies)
            continue
        dest = folder / f.name
        if dest.is_file() and not force and f.matches(dest):
            paths.append(dest)
            continue
        urls = [mirror.rstrip("/") + "/" + f.name] if mirror is not None else list(f.urls)
        errors = []
        for url in urls:
            try:
                paths.append(download_file(url, dest, md5=f.md5, sha256=f.sha256, timeout=timeout))
                break
            except DataError as e:
                errors.append(str(e))
        else:
            raise DataError("; ".join(errors))
        if f.extract == "zip":
            _safe_extract_zip(dest, folder, f.extract_top)
    return paths


def verify(name: str, root: str | os.PathLike) -> list[Path]:
    """Check every file of ``name`` with a known checksum that is present under ``root`` (or
    ``root/<name>``); :class:`DataError` on a mismatch or when no such file is found."""
    spec = specs.get_spec(name)
    checked = []
    for f in spec.files:
        if not (f.md5 or f.sha256):
            continue
        for d in (Path(root), Path(root) / spec.name):
            if (d / f.name).is_file():
                verify_file(d / f.name, md5=f.md5, sha256=f.sha256)
                checked.append(d / f.name)
                break
    if not checked and any(f.md5 or f.sha256 for f in spec.files):
        raise DataError(f"{root}: no file of {name!r} with a known checksum found; expected one of "
                        + ", ".join(f.name for f in spec.files if f.md5 or f.sha256))
    return checked
