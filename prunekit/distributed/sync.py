"""Keeping the processes of a data-parallel run identical: DDP, gradient averaging, state broadcast.

The built-in training step runs the model through :class:`~torch.nn.parallel.DistributedDataParallel`
(Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020): after
``backward()`` every parameter gradient is the mean over the processes, so hooks that read gradients
(RigL/GraNet growth) see the gradient of the global batch. A method with its own update (BiP's two-level
step) calls the model directly and averages with :func:`average_gradients` and :func:`broadcast_buffers`,
which do what DDP does. State that lives outside the model (masks, BiP/HYDRA score banks, schedule
counters) is sent from rank 0 at the start of every phase by :func:`sync_state`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

from .env import is_distributed, rank, world_size


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DDP in a distributed run (``model`` itself otherwise)."""
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


@torch.no_grad()
def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace every existing ``.grad`` by its mean over the processes (one all-reduce per dtype).
    Parameters without a gradient are left alone (every process has the same ones: same graph)."""
    if not is_distributed():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world_size())
        torch._foreach_copy_(grads, [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in grads]), grads)])


@torch.no_grad()
def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (bool tensors travel as uint8)."""
    if not is_distributed():
        return
    for t in tensors:
        if t.dtype == torch.bool:
            carrier = t.to(torch.uint8)
            dist.broadcast(carrier, src)
            t.copy_(carrier)
        else:
            dist.broadcast(t, src)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's module buffers (BatchNorm running statistics) everywhere, as DDP does before a forward."""
    broadcast_tensors([b for b in model.buffers() if b.numel()])


@dataclass(frozen=True)
class _TensorSlot:
    shape: tuple[int, ...]
    dtype: torch.dtype
    on_device: bool  # False: the tensor lives on the CPU (and stays there)


def _map(obj: Any, leaf: type, fn) -> Any:
    """``obj`` with every ``leaf`` inside nested dicts / lists / tuples replaced by ``fn(leaf)``, in order."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map(v, leaf, fn)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, leaf, fn) for v in obj)
    return obj


def broadcast_state(state: Any, device: torch.device, src: int = 0) -> Any:
    """Rank ``src``'s ``state`` (nested dicts/lists of tensors and plain values, as a ``state_dict``) on
    every process: the structure travels pickled, the tensors by ``broadcast`` on ``device`` (the
    training device: NCCL needs CUDA tensors). Tensors that were on the CPU come back on the CPU."""
    if not is_distributed():
        return state
    tensors: list[torch.Tensor] = []

    def to_slot(t: torch.Tensor) -> _TensorSlot:
        tensors.append(t)
        return _TensorSlot(tuple(t.shape), t.dtype, t.device.type != "cpu")

    box = [_map(state, torch.Tensor, to_slot) if rank() == src else None]
    dist.broadcast_object_list(box, src, device=device if device.type == "cuda" else None)
    sent = iter(tensors)

    def receive(slot: _TensorSlot) -> torch.Tensor:
        if rank() == src:
            t = next(sent).detach().to(device, copy=True)
        else:
            t = torch.empty(slot.shape, dtype=slot.dtype, device=device)
        broadcast_tensors([t], src)
        return t if slot.on_device else t.cpu()

    return _map(box[0], _TensorSlot, receive)


def sync_state(model: nn.Module, pruner=None, device: torch.device | None = None) -> None:
    """Make every process hold rank 0's model parameters and buffers and, with a pruner, rank 0's masks
    and method state (``pruner.state_dict()``: score banks, momentum buffers, schedule counters). Called
    when a phase starts, after pruning before it: methods whose pruning is random or order-dependent
    then agree without having to be bit-reproducible across processes."""
    if not is_distributed():
        return
    device = device or next(model.parameters()).device
    broadcast_tensors(list(model.state_dict().values()))
    if pruner is not None:
        pruner.load_state_dict(broadcast_state(pruner.state_dict(), device))
