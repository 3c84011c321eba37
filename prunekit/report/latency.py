"""Inference latency protocol: dense vs masked vs compact (vs CSR) models, reported as ratios.

All candidates run in one process on the same inputs: per batch size, ``warmup`` untimed calls each,
then ``repeats`` rounds in which every candidate is timed once, the order rotating from round to round
(so drift in machine load hits every candidate alike); the statistic is the median over rounds, the
ratio ``baseline median / candidate median`` (> 1: faster than the baseline). Inference mode, eval mode.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

Runner = Callable[[torch.Tensor], object]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class LatencyTable:
    """``seconds[batch][name]``: median seconds per call; ``baseline`` names the reference column."""

    baseline: str
    seconds: dict[int, dict[str, float]] = field(default_factory=dict)

    def speedup(self, batch: int, name: str) -> float:
        row = self.seconds[batch]
        return row[self.baseline] / row[name]

    def format(self) -> str:
        names = list(next(iter(self.seconds.values())))
        head = f"{'batch':>6} " + " ".join(f"{n + ' ms':>14}" for n in names)
        head += " " + " ".join(f"{'x ' + n:>14}" for n in names if n != self.baseline)
        rows = [head]
        for b, row in self.seconds.items():
            line = f"{b:>6} " + " ".join(f"{1e3 * row[n]:>14.2f}" for n in names)
            line += " " + " ".join(f"{self.speedup(b, n):>14.2f}" for n in names if n != self.baseline)
            rows.append(line)
        return "\n".join(rows)


@torch.inference_mode()
def measure_latency(candidates: Mapping[str, nn.Module | Runner], input_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 16, 64), warmup: int = 3, repeats: int = 15,
                    device: torch.device | str = "cpu", seed: int = 0) -> LatencyTable:
    """Median latency of each candidate (a model or a callable on a batch) per batch size; the first
    candidate is the baseline of the ratios."""
    device = torch.device(device)
    for c in candidates.values():
        if isinstance(c, nn.Module):
            c.eval()
    names = list(candidates)
    table = LatencyTable(baseline=names[0])
    gen = torch.Generator().manual_seed(seed)
    for b in batch_sizes:
        x = torch.randn((b, *input_shape), generator=gen).to(device)
        for name in names:
            for _ in range(warmup):
                candidates[name](x)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                _sync(device)
                t0 = time.perf_counter()
                candidates[name](x)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
        table.seconds[b] = {n: statistics.median(t) for n, t in times.items()}
    return table
