"""Run-directory integrity: every file a run reads back is checked before anything is written, a
hand-edited ``config.yaml`` is detected, and one process at a time works in a directory.

* :func:`preflight` validates what a run will read (``result.json``, ``config.yaml`` against the hash on its
  first line, ``prune.json`` of a partial run, checkpoint paths, the cached pretraining's
  ``summary.json``), the output locations and the results store; it writes nothing. A damaged file is a
  :class:`~prunekit.errors.RunDirError` naming it and the fix (``--force`` redoes the run).
* :func:`locked` holds an exclusive lock on a directory (the run's, the shared pretraining's, an IMP
  chain's): a second process on it waits, and the OS releases the lock when its holder dies.
* :func:`read_json` / :func:`read_jsonl` read a file prunekit wrote, as a RunDirError when it is damaged.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from ..errors import RunDirError
from ..utils.hashing import text_digest
from ..utils.io import atomic_write_text
from .config import ExperimentConfig
from .layout import RunPaths
from .paths import check_inside, check_output_dir

HASH_LINE = "# written by prunekit; sha256 of the lines below: "  # config.yaml's first line (a YAML comment)
FORCE = "run again with --force to redo the run"


def _damaged(path: Path, problem: str, fix: str = FORCE) -> RunDirError:
    return RunDirError(f"{path}: {problem}; {fix}")


def read_json(path: Path, fix: str = FORCE, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path`` (prunekit wrote it); RunDirError when it is unreadable, not an object, or
    lacks one of ``keys``."""
    try:
        data = json.loads(Path(path).read_text())
    except IsADirectoryError:
        raise _damaged(path, "is a directory, not a file prunekit wrote", fix) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _damaged(path, f"damaged, not readable JSON ({type(e).__name__}: {e})", fix) from None
    if not isinstance(data, dict):
        raise _damaged(path, f"damaged: holds a {type(data).__name__}, not the JSON object prunekit writes", fix)
    missing = [k for k in keys if k not in data]
    if missing:
        raise _damaged(path, f"damaged: no {missing[0]!r} entry", fix)
    return data


def read_jsonl(path: Path, fix: str = FORCE) -> list[dict[str, Any]]:
    """The JSON objects of a metrics file, one per line; RunDirError naming the first bad line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _damaged(path, f"not readable ({type(e).__name__}: {e})", fix) from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise _damaged(path, f"line {i} is damaged, not a JSON object", fix)
        out.append(record)
    return out


def config_text(cfg: ExperimentConfig) -> str:
    """``config.yaml``: the resolved settings, after a comment line with their hash (:data:`HASH_LINE`)."""
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return f"{HASH_LINE}{text_digest(body)}\n{body}"


def _unedited(text: str) -> bool | None:
    """Whether ``config.yaml``'s text is as prunekit wrote it (None: no hash line, an older version's file)."""
    first, _, body = text.partition("\n")
    if not first.startswith(HASH_LINE):
        return None
    return first[len(HASH_LINE):].strip() == text_digest(body)


def write_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """``config.yaml`` with its hash line. A file prunekit wrote that differs at most in ``output`` (where the
    run lives, not what it is: a moved output root) is left as it is, so a resume that fails later has
    written nothing."""
    path = RunPaths.at(run_dir).config
    if path.is_file():
        old = path.read_text()
        if _unedited(old) and _differing(old, cfg, ignore=("output",)) == []:
            return
    atomic_write_text(path, config_text(cfg))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


NOT_IDENTITY = ("output", "reference", "grid", "name", "description")  # where a run is written, not what it is


def _differing(text: str, cfg: ExperimentConfig, ignore: tuple[str, ...] = NOT_IDENTITY) -> list[str]:
    """The dotted keys of the run's settings whose values differ between the YAML ``text`` and ``cfg`` (all of
    them when ``text`` is not a mapping), except those starting with ``ignore``."""
    edited = yaml.safe_load(text)
    ours = _flat(cfg.model_dump(mode="json"))
    theirs = _flat(edited) if isinstance(edited, dict) else {"": edited}
    return sorted(k for k in set(ours) | set(theirs) if ours.get(k, "<unset>") != theirs.get(k, "<unset>")
                  and not k.startswith(ignore))


def check_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """RunDirError when ``config.yaml`` was changed since prunekit wrote it (the hash on its first line does not
    match, or the line is gone) in a setting of the run (not layout, comments or ``output``), naming the
    differing keys."""
    path = RunPaths.at(run_dir).config
    if not path.exists():
        return
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise _damaged(path, f"not readable ({type(e).__name__})") from None
    unedited = _unedited(text)
    if unedited:
        return
    fix = "restore it (settings belong in the recipe or key=value overrides), or run again with --force to redo " \
          "the run with the settings given"
    try:
        edited = yaml.safe_load(text)
    except yaml.YAMLError:
        raise _damaged(path, "was edited by hand since prunekit wrote it and is no longer valid YAML", fix) from None
    if not isinstance(edited, dict):
        raise _damaged(path, "was edited by hand since prunekit wrote it and is no longer a mapping of settings", fix)
    ours, theirs = _flat(cfg.model_dump(mode="json")), _flat(edited)
    keys = _differing(text, cfg)
    if unedited is None:  # no hash line: edited, or an older version's file (settings it did not have are fine)
        keys = [k for k in keys if k in ours and k in theirs]
    if not keys:
        return
    shown = ", ".join(f"{k}: {theirs.get(k, '<unset>')!r} in the file, {ours.get(k, '<unset>')!r} in the run's "
                      f"settings" for k in keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
    raise _damaged(path, f"was edited by hand since prunekit wrote it ({shown})", fix)


def check_result(run_dir: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The finished run's row from ``result.json`` (None when the run is not finished); RunDirError when the
    file is damaged or belongs to another run."""
    from .runner import run_id  # here, not at the top: the runner imports this module

    path = RunPaths.at(run_dir).result
    if not (path.exists() or path.is_symlink()):
        return None
    row = read_json(path, keys=("run_id",))
    if row["run_id"] != run_id(cfg):
        raise _damaged(path, f"belongs to run {row['run_id']!r}, not {run_id(cfg)!r}")
    return row


def _check_partial(run_dir: Path, cfg: ExperimentConfig) -> None:
    from .lifecycles import facts_for  # here, not at the top: the lifecycles import this module

    paths = RunPaths.at(run_dir)
    for ckpt in paths.checkpoints():
        if not ckpt.is_file():
            raise _damaged(ckpt, "is not a file (a checkpoint is)")
    phase = facts_for(cfg.method_settings).pruned_phase
    if phase and paths.checkpoint(phase).exists():  # resumes past pruning: reads prune.json
        path = paths.prune
        if not path.exists():
            raise _damaged(path, f"missing, but {paths.checkpoint(phase).name} says pruning was done")
        read_json(path)


def check_caches(cfg: ExperimentConfig) -> None:
    """The cached dense pretraining this run would reuse (after-training, IMP and dense runs)."""
    from .lifecycles import facts_for  # here, not at the top: the lifecycles import this module

    if not facts_for(cfg.method_settings).pretrained:
        return
    shared = RunPaths.of(cfg).pretraining
    if shared.complete():
        read_json(shared.summary, fix=f"delete {shared.path} to recompute it", keys=("final_acc", "wall_time", "steps"))


def preflight(cfg: ExperimentConfig, run_dir: Path, force: bool) -> dict[str, Any] | None:
    """Check everything the run will read back or write to; the finished run's row when it is done (and
    not ``force``). Writes nothing."""
    from .runner import store_for  # here, not at the top: the runner imports this module

    root = Path(cfg.output.root)
    check_output_dir(root, "output.root")
    check_inside(root, run_dir, "run directory")
    if run_dir.exists() and not run_dir.is_dir():
        raise _damaged(run_dir, "is a file, not a run directory", "move it away")
    store_for(cfg).check(write=True)
    check_caches(cfg)
    if force or not run_dir.is_dir():
        return None
    check_config(run_dir, cfg)
    row = check_result(run_dir, cfg)
    if row is None:
        _check_partial(run_dir, cfg)
    return row


def clear(paths: RunPaths) -> None:
    """Remove a run's own files before ``--force`` redoes it (caches shared with other runs stay)."""
    for path in paths.own_files():
        with contextlib.suppress(FileNotFoundError, OSError if path.is_dir() else ()):
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


def take_lock(fd: int, what: str, on_wait: Callable[[str], None] | None = None) -> None:
    """An exclusive ``flock`` on ``fd``; when another process holds it, ``on_wait(message)`` and block."""
    import fcntl  # POSIX only: its callers (locked, the sweep's group lock) check that it imports

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait(f"waiting for {what}")
        fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def locked(directory: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (an existing folder) while the block runs; a second process
    waits. The lock is taken on the folder itself, so no lock file is left behind; the OS releases it if the
    holder dies."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # no POSIX locks on this platform: runs are not serialised
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        take_lock(fd, f"{directory} (another process is running it)", on_wait)
        yield
    finally:
        os.close(fd)  # releases the lock
