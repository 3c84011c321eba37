"""Optimizers and per-step LR schedules built from a :class:`TrainConfig`.

Every schedule is a ``LambdaLR`` stepped once per optimizer step, so its state is just a step count
(checkpoint/resume is exact). Per-epoch schedules change value only at epoch boundaries, which is what
stepping a per-epoch scheduler does in the references.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from .config import TrainConfig


def build_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    # a captured step (train.cuda_graph) needs Adam's step counter on the device
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                capturable=cfg.cuda_graph)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             capturable=cfg.cuda_graph)


def lr_factor_fn(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """``factor(step)`` multiplying the base LR after ``step`` optimizer steps."""
    spe = max(1, steps_per_epoch)
    epochs = max(1, math.ceil(total_steps / spe))
    if cfg.schedule == "constant":
        return lambda step: 1.0
    if cfg.schedule == "multistep":
        milestones = sorted(cfg.milestones)
        return lambda step: cfg.gamma ** sum(step // spe >= m for m in milestones)
    if cfg.schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * (step // spe) / epochs))
    if cfg.schedule == "cosine_bip":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * (step // spe - 1) / epochs))
    warmup = cfg.warmup_steps

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return warmup_cosine


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg, steps_per_epoch, total_steps))


def lr_change_period(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps between changes of the LR factor: 0 never (``constant``), 1 every step
    (``warmup_cosine``), else one epoch (the per-epoch schedules only move at epoch boundaries)."""
    if cfg.schedule == "constant":
        return 0
    return 1 if cfg.schedule == "warmup_cosine" else max(1, steps_per_epoch)


def set_lr_(optimizer: torch.optim.Optimizer, scheduler, factor: float) -> None:
    """What ``LambdaLR.step()`` writes into the param groups (``base_lr * factor``), without its per-call
    bookkeeping: the training loops call it only where the factor can change (:func:`lr_change_period`)."""
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor


def sync_scheduler_(scheduler, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Bring ``scheduler``'s state to what ``step`` calls of ``step()`` leave (before a checkpoint)."""
    scheduler.last_epoch = step
    scheduler._step_count = step + 1
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

