"""Rows of docs/reliability.md, recorded by the tests that check them.

A reliability test calls :func:`record` after its assertions with what it tried and what happened (the
real message or figure of that run). When ``PRUNEKIT_RELIABILITY_LOG`` names a file, each row is
appended to it as one JSON line; ``python tools/reliability_table.py`` runs the tests that way and
renders the table. Without the variable :func:`record` does nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.errors import PrunekitError

ENV = "PRUNEKIT_RELIABILITY_LOG"

AREAS = {
    "config": "Bad input: configuration and command line",
    "data": "Bad input: data files",
    "numbers": "Bad input: numbers, counts and sizes",
    "checkpoint": "Bad input: checkpoints and masks",
    "store": "Results store",
    "rundir": "Run directories and output locations",
    "paths": "Path containment",
    "fault": "Faults",
    "fuzz": "Fuzzing",
    "security": "Security",
}


def record(area: str, tried: str, happened: str, tmp_path: Path | None = None) -> None:
    """Append one row (``area`` is a key of :data:`AREAS`); ``tmp_path`` is shown as ``<tmp>``."""
    if area not in AREAS:
        raise ValueError(f"area {area!r}; allowed: {', '.join(AREAS)}")
    path = os.environ.get(ENV)
    if not path:
        return
    if tmp_path is not None:
        happened = happened.replace(str(tmp_path), "<tmp>")
        tried = tried.replace(str(tmp_path), "<tmp>")
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    line = json.dumps({"area": area, "tried": tried, "happened": happened, "test": test}) + "\n"
    with open(path, "a", encoding="utf-8") as fh:  # one append per row: parallel writers do not interleave
        fh.write(line)


def cli_error(capsys, argv: list[str], written: Path | None = None) -> str:
    """Run ``prunekit argv``; assert exit status 2, exactly one ``prunekit: error:`` line on stderr and
    nothing created at ``written``. Returns the line."""
    from prunekit.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse rejects a flag's value before main runs a command
        code = e.code
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), err
    if written is not None:
        assert not written.exists(), f"{written} was created"
    return lines[0]


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (not following links) with its kind, size and modification time: two
    equal snapshots mean nothing was created, removed or written there."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return out


def unchanged(before: dict[str, tuple], after: dict[str, tuple]) -> str:
    """'' when the snapshots are equal, else what was created, removed or modified."""
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    modified = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return "; ".join(f"{what}: {', '.join(items[:5])}" for what, items in
                     (("created", created), ("removed", removed), ("modified", modified)) if items)


def fuzz_settings(max_examples: int) -> settings:
    """Bounded, reproducible fuzzing: a fixed example sequence (no example database) and a deadline."""
    return settings(max_examples=max_examples, deadline=timedelta(seconds=5), derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds``: a hang fails the test instead of stalling it."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Outcomes:
    """Calls a reader on fuzzed input and counts what happened; an exception other than ``allowed``
    (or a call longer than ``limit`` seconds) propagates and fails the test."""

    def __init__(self, allowed: tuple[type[BaseException], ...] = (PrunekitError,), limit: float = 30.0):
        self.allowed, self.limit = allowed, limit
        self.counts: Counter[str] = Counter()

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with time_limit(self.limit):
            try:
                out = fn(*args, **kwargs)
            except self.allowed as e:
                self.counts[type(e).__name__] += 1
                return None
        self.counts["accepted"] += 1
        return out

    def summary(self) -> str:
        """``"150 inputs: 141 DataError, 9 accepted; nothing else raised, none hung"``."""
        parts = [f"{n} {name}" for name, n in sorted(self.counts.items(), key=lambda kv: -kv[1])]
        return (f"{sum(self.counts.values())} inputs: {', '.join(parts)}; no other exception, "
                f"none over {self.limit:g} s")


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """``data`` with bytes overwritten at ``edits`` (positions wrap around) and cut at ``cut``."""
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)


def cuts(data: bytes):
    return st.one_of(st.none(), st.integers(0, len(data)))


def fuzz_mutations(valid: bytes, max_examples: int, use: Callable[[bytes], None]) -> None:
    """Call ``use`` on ``max_examples`` copies of ``valid`` with up to 6 bytes overwritten and/or cut short."""
    @fuzz_settings(max_examples)
    @given(edits=EDITS, cut=cuts(valid))
    def check(edits, cut):
        use(mutate(valid, edits, cut))

    check()
