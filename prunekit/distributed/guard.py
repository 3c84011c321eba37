"""Mask agreement across the processes of a distributed run, checked and logged.

Data parallelism is only correct while every process prunes the same weights. The trainer compares a
checksum of every layer's mask across processes (one ``all_gather`` of a few integers) when a phase
starts, after every step at which the method may change its masks (:meth:`Pruner.mask_changed_at`) and
at every segment end; a difference stops the run on every process with :class:`MaskDivergenceError`,
before the next checkpoint is written. Rank 0 logs every comparison to
``mask-checksums-<phase>.jsonl`` next to the phase's metrics.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import MaskError
from ..sparsity import MaskSet
from ..utils.io import atomic_write_text
from .env import is_distributed, is_main, world_size


class MaskDivergenceError(MaskError):
    """The processes of a distributed run hold different masks."""


_PRIME = 2**31 - 1
_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant, coprime with the prime


def layer_checksums(masks: MaskSet) -> torch.Tensor:
    """Int64 tensor, one entry per layer: the sum over kept positions ``i`` of
    ``((i + 1) * 2654435761 mod (2**31 - 1)) + 1``. Within a layer of fewer than 2**31 - 1 weights every
    position has its own non-zero weight, so one flipped entry, or one weight moved to another position,
    always changes the sum (the sum stays below 2**63 up to 4e9 weights)."""
    sums = []
    for m in masks.values():
        idx = torch.arange(1, m.numel() + 1, device=m.device, dtype=torch.int64)
        sums.append((idx.mul_(_MULTIPLIER).remainder_(_PRIME).add_(1) * m.reshape(-1)).sum())
    return torch.stack(sums)


def check_masks(masks: MaskSet, where: str) -> list[int]:
    """Compare every layer's mask checksum across the processes; the per-process totals (all equal) on
    success, :class:`MaskDivergenceError` naming the first differing layer and ranks otherwise (raised
    on every process alike, so none is left waiting in a collective)."""
    local = layer_checksums(masks)
    if not is_distributed():
        return [int(local.sum())]
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered).cpu()  # ranks x layers
    differs = (table != table[0]).any(dim=0)
    if bool(differs.any()):
        layer = int(differs.nonzero()[0, 0])
        other = int((table[:, layer] != table[0, layer]).nonzero()[0, 0])
        raise MaskDivergenceError(
            f"{where}: masks differ across processes: {masks.names()[layer]!r} has checksum "
            f"{int(table[0, layer])} on rank 0 and {int(table[other, layer])} on rank {other}; every process "
            f"must hold the same masks, so the run stops (no checkpoint of this state is written)")
    return table.sum(dim=1).tolist()


class TrainerSync:
    """What :class:`~prunekit.train.Trainer` does in a distributed run besides DDP: mask comparisons and
    their log, and per-segment training losses averaged over the processes. ``create`` returns None
    outside a distributed run."""

    def __init__(self, trainer):
        self.trainer = trainer
        metrics = trainer.metrics_path
        self.log_path: Path | None = metrics.with_name(f"mask-checksums-{trainer.phase}.jsonl") if metrics else None
        self._pending: list[dict[str, Any]] = []

    @classmethod
    def create(cls, trainer) -> "TrainerSync | None":
        return cls(trainer) if is_distributed() else None

    @property
    def _masks(self) -> MaskSet | None:
        pruner = self.trainer.pruner
        return pruner.masks if pruner is not None and pruner.prunes else None

    def start(self) -> None:
        """At the start (or resumption) of the phase: forget log lines past the resumed step, compare."""
        step = self.trainer.step
        if is_main() and self.log_path is not None and self.log_path.exists():
            lines = [line for line in self.log_path.read_text().splitlines()
                     if line.strip() and json.loads(line)["step"] <= step]
            atomic_write_text(self.log_path, "".join(line + "\n" for line in lines))
        self.check("start", step)

    def after_step(self, step: int) -> None:
        pruner = self.trainer.pruner
        if pruner is not None and pruner.mask_changed_at(step):
            self.check("update", step)

    def check(self, event: str, step: int) -> None:
        masks = self._masks
        if masks is None:
            return
        try:
            sums = check_masks(masks, f"{self.trainer.phase}: after step {step}")
        except MaskDivergenceError:
            self.flush()
            raise
        self._pending.append({"phase": self.trainer.phase, "step": step, "event": event, "checksums": sums})

    def mean_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-step training losses averaged over the processes (so every process sees the same
        non-finite loss and stops alike)."""
        losses = losses.clone()
        dist.all_reduce(losses)
        return losses.div_(world_size())

    def end_segment(self) -> None:
        self.check("segment", self.trainer.step)
        self.flush()

    def flush(self) -> None:
        if is_main() and self.log_path is not None and self._pending:
            with open(self.log_path, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in self._pending)
        self._pending.clear()
