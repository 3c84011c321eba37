"""Distributed data-parallel training on PyTorch's own stack (``torch.distributed``, DDP, torchrun).

``torchrun --nproc_per_node=N -m prunekit run RECIPE`` trains every run of the recipe with N processes
(see ``docs/distributed.md``): :mod:`.env` joins the process group, :mod:`.shard` splits every global
batch across the processes, :mod:`.sync` wraps the model in DDP and sends rank 0's model and pruner
state to all processes when a phase starts, :mod:`.guard` compares the masks across processes at every
mask update. Only rank 0 writes checkpoints, metrics, masks, results and the store; a resumed run loads
rank 0's checkpoint in every process. :mod:`prunekit.experiments.slurm` sends sweeps to SLURM through submitit.
"""
from .env import barrier, init_from_env, is_distributed, is_main, rank, world_size
from .guard import MaskDivergenceError, TrainerSync, check_masks, layer_checksums
from .shard import shard_loader
from .sync import average_gradients, broadcast_buffers, broadcast_state, broadcast_tensors, sync_state, wrap_model

__all__ = [
    "MaskDivergenceError", "TrainerSync", "average_gradients", "barrier", "broadcast_buffers", "broadcast_state",
    "broadcast_tensors", "check_masks", "init_from_env", "is_distributed", "is_main", "layer_checksums", "rank",
    "shard_loader", "sync_state", "world_size", "wrap_model",
]
