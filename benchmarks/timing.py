"""Shared helpers for the benchmarks: wall time with the device synchronised around the call, and the
machine-readable record of each measured ratio that ``benchmarks.run_all`` collects into the docs."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable

import torch


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


def record(bench: str, measure: str, values: list[float], target: float | None, unit: str,
           at_least: bool = False) -> None:
    """Append one measured ratio to the JSON-lines file named by ``PRUNEKIT_BENCH_RESULTS`` (set by
    ``benchmarks.run_all``); without it, nothing. ``values``: one ratio per repeat; the target is an
    upper bound, or a lower bound with ``at_least``."""
    path = os.environ.get("PRUNEKIT_BENCH_RESULTS")
    if not path:
        return
    med = statistics.median(values)
    met = None if target is None else bool(med >= target if at_least else med <= target)
    row = {"bench": bench, "measure": measure, "unit": unit, "repeats": len(values), "min": min(values),
           "median": med, "max": max(values), "target": target, "at_least": at_least, "met": met}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
