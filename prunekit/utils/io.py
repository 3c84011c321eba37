"""Atomic file writes: write to a temporary file in the same directory, fsync, rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file, even if the process is killed mid-write. The file gets the mode any ``open()`` would
give it (0666 less the umask: 0644 by default), not the temporary file's private 0600.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import OutputError

_FULL = 1 << 20  # a failed write with less free space than this is reported as a full disk


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # left by a writer that was killed before its rename
    # the owner in the name: cleanup never removes the file of a writer that is still alive
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide reports from collaborators
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException as e:
        free = _free_after_failure(e, path.parent)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if free is not None:
            raise OutputError(f"{path}: no space left on device ({free:,} bytes free in {path.parent}); nothing was "
                              f"written (an earlier version of the file is intact); allowed: free space, or another "
                              f"output folder, then run again") from None
        raise


def _free_after_failure(e: BaseException, directory: Path) -> int | None:
    """The free bytes in ``directory`` when ``e`` is a write that failed for lack of space, else None
    (torch.save reports a full disk as a RuntimeError without an errno, hence the free-space test)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            st = os.statvfs(directory)
            return st.f_bavail * st.f_frsize
        return 0
    if isinstance(e, (OSError, RuntimeError)):
        with contextlib.suppress(OSError):
            st = os.statvfs(directory)
            if st.f_bavail * st.f_frsize < _FULL:
                return st.f_bavail * st.f_frsize
    return None


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _is_stale(tmp: Path, target: str) -> bool:
    """Whether the temporary file ``tmp`` of ``target`` was left by a writer that is gone: its owner (host
    and pid in the name) runs on this host and is no longer alive. A name without an owner is an older
    version's (single writer): stale."""
    owner = tmp.name[len(target) + 2:].rsplit(".", 2)[0]
    host, _, pid = owner.rpartition("-")
    if not pid.isdigit() or not host:
        return True
    if host != socket.gethostname():
        return False  # another machine's writer (a shared filesystem): it cleans up its own
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` on Linux: no window in which
    another thread would create files with a different mask); elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left next to ``path`` when a writer was killed
    before its rename; the file of a writer that is still alive (another process) is kept."""
    path = Path(path)
    found = path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if path.parent.is_dir() else []
    stale = [tmp for tmp in found if _is_stale(tmp, path.name)]
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
