"""Shared helpers for the benchmarks: wall time with the device synchronised around the call, and the
machine-readable record of each measured ratio that ``benchmarks.run_all`` collects into the docs."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch


def device_parser(doc: str, repeats: int = 5) -> argparse.ArgumentParser:
    """An argument parser with the flags every device benchmark takes: --repeats, --threads, --device."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def start(args: argparse.Namespace) -> torch.device:
    """Apply --threads (both sides of every ratio run at this count) and return the --device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timing covers the kernels and not just their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, inner: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``inner`` back-to-back calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / inner


QUIET = 1.3  # a round is quiet when both sides ran within this factor of their own fastest round


def quiet_rounds(a: list[float], b: list[float]) -> list[int]:
    """Indices of the paired rounds where both times are within ``QUIET``x of their side's fastest: rounds
    another process on the machine did not slow down (noisy shared machines)."""
    fa, fb = min(a), min(b)
    return [i for i, (x, y) in enumerate(zip(a, b)) if x <= QUIET * fa and y <= QUIET * fb]


def quiet_median(a: list[float], b: list[float], ratio: Callable[[float, float], float]) -> float:
    """Median of ``ratio(a[i], b[i])`` over the quiet rounds (:func:`quiet_rounds`); NaN when no round
    was quiet on both sides (printed as such: the machine was too busy for this measure)."""
    quiet = [ratio(a[i], b[i]) for i in quiet_rounds(a, b)]
    return statistics.median(quiet) if quiet else float("nan")


def record(bench: str, measure: str, values: list[float], target: float | None, unit: str,
           at_least: bool = False, quiet: float | None = None) -> None:
    """Append one measured ratio to the JSON-lines file named by ``PRUNEKIT_BENCH_RESULTS`` (set by
    ``benchmarks.run_all``); without it, nothing. ``values``: one ratio per repeat; the target is an
    upper bound, or a lower bound with ``at_least``; ``quiet``: the quiet-round median where measured."""
    path = os.environ.get("PRUNEKIT_BENCH_RESULTS")
    if not path:
        return
    med = statistics.median(values)
    met = None if target is None else bool(med >= target if at_least else med <= target)
    row = {"bench": bench, "measure": measure, "unit": unit, "repeats": len(values), "min": min(values),
           "median": med, "max": max(values), "target": target, "at_least": at_least, "met": met,
           "quiet": None if quiet is None or quiet != quiet else quiet}  # NaN: no quiet round
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def paired(ours: Callable[[], object], theirs: Callable[[], object], device: torch.device, repeats: int,
           inner: int = 1) -> tuple[list[float], list[float]]:
    """Seconds per call of both sides over ``repeats`` paired rounds, alternating which side goes first
    (both in this process, at the current thread count)."""
    a, b = [], []
    for r in range(repeats):
        if r % 2:
            b.append(timed(theirs, device, inner))
            a.append(timed(ours, device, inner))
        else:
            a.append(timed(ours, device, inner))
            b.append(timed(theirs, device, inner))
    return a, b


def record_versus(bench: str, measure: str, ours: list[float], theirs: list[float], unit: str,
                  target: float | None = None) -> tuple[float, float]:
    """Record ``ours / theirs`` per paired round (all-round and quiet-round medians); returns both medians."""
    ratios = [x / y for x, y in zip(ours, theirs)]
    quiet = quiet_median(ours, theirs, lambda x, y: x / y)
    record(bench, measure, ratios, target, unit, quiet=quiet)
    return statistics.median(ratios), quiet

