"""The process group: joined from the environment ``torchrun`` (or SLURM through submitit) sets.

``torchrun --nproc_per_node=N -m prunekit run RECIPE`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set (PyTorch, "torchrun (Elastic Launch)"). A run
joins the group once, with NCCL when it trains on CUDA and gloo on the CPU; on CUDA every process
takes the GPU ``cuda:LOCAL_RANK``. Without those variables everything here is a no-op: rank 0 of 1.
"""
from __future__ import annotations

import atexit
import os
import sys

import torch
import torch.distributed as dist

from ..errors import ConfigError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the only process that writes checkpoints, metrics, results and prints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _env_int(name: str, minimum: int) -> int:
    raw = os.environ.get(name)
    try:
        value = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"environment variable {name}={raw!r} not allowed; allowed: an integer >= {minimum} "
                          f"(set by torchrun together with {', '.join(ENV_VARS)})") from None
    if value < minimum:
        raise ConfigError(f"environment variable {name}={value} not allowed; allowed: an integer >= {minimum}")
    return value


def launched_world_size() -> int:
    """``WORLD_SIZE`` of the launcher's environment (1 when not launched by torchrun or SLURM)."""
    return _env_int("WORLD_SIZE", 1) if "WORLD_SIZE" in os.environ else 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group the environment describes (once per process) and return the device this
    process trains on: ``device`` itself, or ``cuda:LOCAL_RANK`` for ``cuda``. No group: ``device``."""
    world = launched_world_size()
    if world == 1:
        return device
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but environment variable {missing[0]} is not set; "
                          f"launch with torchrun, which sets {', '.join(ENV_VARS)}")
    local = _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if device.index not in (None, local):
            raise ConfigError(f"device={str(device)!r} not allowed when launched with torchrun: process "
                              f"{local} of its node uses cuda:{local}; allowed: cuda, auto")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPUs; allowed: "
                              f"--nproc_per_node <= {torch.cuda.device_count()}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        atexit.register(_leave)
        if dist.get_rank() != 0 and not os.environ.get("PRUNEKIT_PRINT_ALL_RANKS"):
            # one copy of progress bars and tables (rank 0's); errors still reach stderr from every rank
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    elif dist.get_backend() != backend:
        raise ConfigError(f"device={str(device)!r} but this process group uses {dist.get_backend()}; allowed: one "
                          f"device type for every run of a distributed sweep")
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
