"""Data plumbing shared by the data-driven scorers: a fixed number of samples, on the model's device."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..modelio import batch_size_of, batch_to, slice_batch

Batch = tuple[Tensor, Tensor]


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def take_samples(batches: Iterable[Batch] | None, num_samples: int, device: torch.device, what: str) -> list[Batch]:
    """The first ``num_samples`` samples of ``batches`` (the last batch cut), moved to ``device``.

    Fewer samples are used when the data runs out; no data at all is a :class:`ConfigError`.
    """
    if batches is None:
        raise ConfigError(f"{what} needs data: pass batches in the PruneContext (ctx.batches)")
    out: list[Batch] = []
    remaining = int(num_samples)
    for x, y in batches:
        if remaining <= 0:
            break
        n = batch_size_of(x)
        if n > remaining:
            x, y, n = slice_batch(x, remaining), y[:remaining], remaining
        out.append((batch_to(x, device), y.to(device, non_blocking=True)))
        remaining -= n
    if not out:
        raise ConfigError(f"{what} needs data but ctx.batches yielded no batch")
    return out


def cycle_batches(batches: Iterable[Batch] | None, what: str) -> Iterator[Batch]:
    """Endless iteration over ``batches`` (re-iterating a loader when it is exhausted)."""
    if batches is None:
        raise ConfigError(f"{what} needs data: pass batches in the PruneContext (ctx.batches)")
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ConfigError(f"{what} needs data but ctx.batches yielded no batch")


def num_classes_of(model: nn.Module, x: Tensor) -> int:
    """Width of the model's output on one sample (eval mode, no grad: no side effect on BN statistics)."""
    with train_mode(model, False), torch.no_grad(), threads_for(x.device, 0):
        return int(model(x[:1]).shape[-1])


def input_shape_from(input_shape: Sequence[int] | None, batches: Iterable[Batch] | None, what: str) -> tuple[int, ...]:
    """``input_shape`` if given, else the shape of one sample of the first batch (of its ``input_ids`` for a
    mapping batch: the data-free path counts feed the model one tensor)."""
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    if batches is not None:
        for x, _ in batches:
            if isinstance(x, Mapping):
                x = x["input_ids"] if "input_ids" in x else next(iter(x.values()))
            return tuple(x.shape[1:])
    raise ConfigError(f"{what} needs input_shape (e.g. [3, 32, 32]) or ctx.batches to read it from")


@contextlib.contextmanager
def train_mode(model: nn.Module, train: bool):
    """Temporarily set ``model.train(train)`` and restore every module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


@contextlib.contextmanager
def threads_for(device: torch.device | str, work: int, threads: int | None = None):
    """Intra-op CPU threads for a loop of small operations (batch-1 path counts, flat score vectors).

    ``threads=None`` picks one thread per million elements of ``work`` (at least one, at most the current
    setting): below that, OpenMP's fork/join per operation costs more than it saves, and far more when
    other processes share the cores. Restores the previous setting; does nothing off the CPU.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    n = threads if threads is not None else max(1, min(old, work // 1_000_000))
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
