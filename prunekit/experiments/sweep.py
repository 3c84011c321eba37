"""Sweeps: a grid of runs (methods × sparsities × seeds × models × any config key), run one after the
other or by N worker processes, skipping finished runs and resuming killed ones.

A sweep file is a recipe (every recipe key is allowed and sets the base of every run) plus two optional
sweep-only keys::

    name: quickstart            # run directories: <output.root>/<name>/...; default: the file's stem
    base: quickstart            # start from this recipe (its sections, grid and paper numbers) ...
    workers: 2                  # default for --workers
    grid:                       # ... and extend its grid: keys given here replace the base's
      method.sparsity: [0.5, 0.8, 0.9, 0.95, 0.98]
      seed: [0, 1, 2]

Methods without pruning (``dense``) ignore grid sparsities, so a methods × sparsities grid runs each
dense seed once.

Safety when several processes share an output root: runs that share a cache (the dense pretraining of
``dense``, after-training and IMP runs with the same model/data/train/seed) form one *group*; a group
runs in one process at a time under an exclusive file lock (``<root>/_locks/``), so the shared
pretraining is trained once and never written by two processes. Worker processes die with their
parent (Linux ``PR_SET_PDEATHSIG``), so a killed sweep leaves no orphan writing to a run directory;
starting it again skips finished runs, resumes the interrupted ones from their checkpoints, and the
store's upsert keyed by run id keeps exactly one row per run.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import ConfigError, PrunekitError
from .config import ExperimentConfig, build_config, parse_overrides, pretrain_hash
from .layout import OutputRoot, RunPaths
from .lifecycles import facts_for
from .progress import Reporter
from .recipes import expand_grid, find_recipe, load_recipe
from .runner import run_dir_for, run_experiment, store_for
from .rundir import take_lock

SWEEP_KEYS = ("base", "workers")


@dataclass
class Sweep:
    """A sweep file resolved into validated run configurations."""

    name: str
    source: Path
    configs: list[ExperimentConfig]
    workers: int = 1


def load_sweep(ref: str, overrides: list[str] = ()) -> Sweep:
    """Read a sweep file (or a plain recipe), merge its ``base`` recipe, expand the grid, validate every run."""
    source = find_recipe(ref)
    raw = load_recipe(ref)
    workers = _workers(raw.get("workers", 1), f"{source}: workers")
    base_ref = raw.get("base")
    tree = {k: v for k, v in raw.items() if k not in SWEEP_KEYS}
    if base_ref is not None:
        if not isinstance(base_ref, str):
            raise ConfigError(f"{source}: base must be a recipe name or path, got {base_ref!r}")
        base = load_recipe(base_ref)
        grid = {**_grid(base.get("grid"), base_ref), **_grid(tree.get("grid"), source)}
        tree = {**base, **tree, "grid": grid}
    return Sweep(name=tree["name"], source=source, configs=expand(tree, overrides), workers=workers)


def _workers(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}={value!r}: allowed: an integer >= 1")
    return value


def _grid(value: Any, where: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: grid must be a mapping of dotted keys to lists of values")
    return value


def expand(tree: dict[str, Any], overrides: list[str] = ()) -> list[ExperimentConfig]:
    """One validated config per grid combination, without duplicates, dense runs stripped of grid
    sparsities. ``key=value`` overrides apply to every run; ``grid.KEY=[...]`` sets one grid axis (``KEY``
    is dotted itself: ``grid.method.sparsity=[0.5]``), ``grid={...}`` the whole grid."""
    grid = dict(_grid(tree.get("grid"), "recipe"))
    tree = {k: v for k, v in tree.items() if k != "grid"}
    cli = []
    for key, value in parse_overrides(list(overrides)):
        if key == "grid":
            grid = dict(_grid(value, "override grid"))
        elif key.startswith("grid."):
            grid[key[len("grid."):]] = value
        else:
            cli.append((key, value))
    configs, seen = [], set()
    for combo in expand_grid(grid):
        cfg = _without_unused_sparsity(build_config(tree, combo + cli))
        key = (cfg.name, run_dir_for(cfg))
        if key not in seen:  # an override or a dense run can make grid points identical
            seen.add(key)
            configs.append(cfg)
    return configs


def _without_unused_sparsity(cfg: ExperimentConfig) -> ExperimentConfig:
    settings = cfg.method_settings
    if not facts_for(settings).sparse and settings.sparsity:
        return cfg.model_copy(update={"method_settings": settings.model_copy(update={"sparsity": 0.0})})
    return cfg


def group_key(cfg: ExperimentConfig) -> str:
    """Runs with the same key share on-disk caches and must not run concurrently (see module doc)."""
    if facts_for(cfg.method_settings).pretrained:
        return f"pretrain-{pretrain_hash(cfg)}"
    return f"run-{run_dir_for(cfg).name}"


def run_status(cfg: ExperimentConfig) -> str:
    """``finished`` (result written: skipped), ``partial`` (resumes from its checkpoint) or ``pending``."""
    paths = RunPaths.of(cfg)
    if paths.result.exists():
        return "finished"
    if paths.path.is_dir() and paths.checkpoints():
        return "partial"
    return "pending"


@dataclass
class Group:
    key: str
    root: Path
    indices: list[int] = field(default_factory=list)


def groups_of(configs: list[ExperimentConfig], indices: list[int] | None = None) -> list[Group]:
    """Runs (all, or those at ``indices``) grouped by shared cache, in first-appearance order."""
    groups: dict[tuple[str, str], Group] = {}
    for i in range(len(configs)) if indices is None else indices:
        cfg = configs[i]
        root = Path(cfg.output.root)
        key = (str(root.resolve()), group_key(cfg))
        groups.setdefault(key, Group(key=key[1], root=root)).indices.append(i)
    return list(groups.values())


@contextlib.contextmanager
def group_lock(group: Group, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``<root>/_locks/<key>.lock`` exclusively (released by the OS if the holder dies)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks: one sweep at a time per output root
        yield
        return
    path = OutputRoot(group.root).lock(group.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        take_lock(fh.fileno(), f"{path} (another process is running these runs)", on_wait)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Event:
    """One run's outcome, as reported by whichever process ran it."""

    index: int
    status: str  # finished | skipped | failed
    row: dict[str, Any] | None = None
    error: str = ""
    seconds: float = 0.0
    worker: int = 0


def _run_one(index: int, cfg: ExperimentConfig, force: bool, reporter, worker: int) -> Event:
    t0 = time.perf_counter()
    skipped = not force and run_status(cfg) == "finished"
    try:
        row = run_experiment(cfg, force=force, reporter=reporter)
    except PrunekitError as e:
        return Event(index, "failed", error=str(e), seconds=time.perf_counter() - t0, worker=worker)
    except Exception as e:  # a bug in one run must not take the other runs of a sweep down
        return Event(index, "failed", error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0,
                     worker=worker)
    return Event(index, "skipped" if skipped else "finished", row=row, seconds=time.perf_counter() - t0,
                 worker=worker)


def threads_per_worker(workers: int) -> int:
    """CPU threads each of ``workers`` processes may use without oversubscribing this machine."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, cpus // workers)


def run_sweep(configs: list[ExperimentConfig], workers: int = 1, force: bool = False,
              on_event: Callable[[Event], None] = lambda e: None, reporter=None,
              on_message: Callable[[str], None] = lambda m: None, pack: int | None = None) -> list[Event]:
    """Run every config (finished ones are skipped unless ``force``); returns one event per run, in
    config order. ``workers > 1`` runs cache groups in that many spawned processes; ``pack=K`` trains
    up to K runs at a time as packs in this process (:mod:`prunekit.experiments.packing`)."""
    _workers(workers, "workers")
    if pack is not None:
        _workers(pack, "pack")
        if workers > 1:
            raise ConfigError(f"--pack={pack} with --workers={workers}: packs train in one process; allowed: one "
                              f"of the two")
    events: dict[int, Event] = {}

    def done(event: Event) -> None:
        events[event.index] = event
        on_event(event)

    todo = []
    for i, cfg in enumerate(configs):
        if not force and run_status(cfg) == "finished":  # reported here: no worker needed to skip it
            done(_run_one(i, cfg, force, Reporter(), 0))
        else:
            todo.append(i)
    groups = groups_of(configs, todo)
    workers = min(workers, len(groups))
    if pack is not None:
        _run_packed(configs, groups, pack, force, done, reporter or Reporter(), on_message)
    elif workers <= 1:
        for group in groups:
            with group_lock(group, on_message):
                for i in group.indices:
                    done(_run_one(i, configs[i], force, reporter or Reporter(), 0))
    else:
        _run_parallel(configs, groups, workers, force, done, on_message)
    return [events[i] for i in sorted(events)]


def _run_packed(configs, groups, pack, force, done, reporter, on_message) -> None:
    """Cache groups in ``pack`` lanes whose training phases train as packs; runs that cannot pack are
    named in one line each and run unpacked afterwards."""
    from .packing import PackSession, pack_refusal  # here, not at the top: packing imports this module

    alone: list[tuple[Group, int]] = []
    lanes_groups = []
    for group in groups:
        keep = []
        for i in group.indices:
            why = pack_refusal(configs[i])
            if why is None:
                keep.append(i)
            else:
                on_message(f"run {i + 1} does not pack ({why}); running it unpacked")
                alone.append((group, i))
        if keep:
            lanes_groups.append(Group(group.key, group.root, keep))
    queue_ = iter(lanes_groups)  # lanes take turns, so taking the next group needs no lock

    def lane() -> None:
        for group in queue_:
            with group_lock(group, on_message):
                for i in group.indices:
                    done(_run_one(i, configs[i], force, reporter, 0))

    PackSession(pack, on_message).run([lane] * min(pack, len(lanes_groups)))
    for group, i in alone:
        with group_lock(group, on_message):
            done(_run_one(i, configs[i], force, reporter, 0))


def _run_parallel(configs, groups, workers, force, done, on_message) -> None:
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools or CUDA state
    tasks, results = ctx.Queue(), ctx.Queue()
    # longest groups first, so the last group to start is short (LPT scheduling)
    for gi in sorted(range(len(groups)), key=lambda g: -len(groups[g].indices)):
        tasks.put(gi)
    for _ in range(workers):
        tasks.put(None)
    threads = threads_per_worker(workers)
    procs = [ctx.Process(target=_worker, args=(w + 1, configs, groups, force, threads, tasks, results, os.getpid()),
                         name=f"prunekit-sweep-{w + 1}") for w in range(workers)]
    for p in procs:
        p.start()
    pending = {i for g in groups for i in g.indices}
    running: dict[int, int] = {}  # worker -> group index it is running
    try:
        while pending:
            try:
                kind, payload = results.get(timeout=1.0)
            except queue.Empty:
                _fail_dead_workers(procs, groups, running, pending, done)
                continue
            if kind == "group":
                running[payload[0]] = payload[1]
            elif kind == "message":
                on_message(payload)
            elif payload.index in pending:
                pending.discard(payload.index)
                done(payload)
    finally:
        for p in procs:  # done: they are leaving (their queue's end marker); interrupted: stop them now
            p.join(timeout=0 if pending else 10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)


def _fail_dead_workers(procs, groups, running, pending, done) -> None:
    for w, p in enumerate(procs, 1):
        if not p.is_alive() and w in running:
            for i in groups[running.pop(w)].indices:
                if i in pending:
                    pending.discard(i)
                    done(Event(i, "failed", error=f"worker {w} died (exit code {p.exitcode})", worker=w))
    if not any(p.is_alive() for p in procs):
        for i in sorted(pending):  # cannot happen unless every worker died before taking its groups
            done(Event(i, "failed", error="no worker left to run it"))
        pending.clear()


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker(worker: int, configs, groups, force, threads, tasks, results, parent) -> None:
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    try:
        while (gi := tasks.get()) is not None:
            results.put(("group", (worker, gi)))
            with group_lock(groups[gi], lambda m: results.put(("message", f"worker {worker}: {m}"))):
                for i in groups[gi].indices:
                    results.put(("event", _run_one(i, configs[i], force, Reporter(), worker)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        pass


def store_paths(configs: list[ExperimentConfig]) -> list[Path]:
    """The distinct results stores these runs write to."""
    return list(dict.fromkeys(store_for(c).path for c in configs))
