"""Per-process shards of a training loader: the global batch split across the processes.

Every process draws the same epoch plan (the order comes from a generator seeded by (seed, stream,
epoch)) and takes positions ``rank, rank + world_size, ...`` of every global batch of ``batch_size``
samples, like ``torch.utils.data.DistributedSampler`` but per batch, so the steps per epoch, the LR
schedule and the effective batch are those of a single-process run with the same ``batch_size``.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from ..data.imagefolder import FolderLoader, _collate, _Failure
from ..data.loader import TensorLoader
from ..data.rng import generator
from ..errors import ConfigError, DataError
from .env import is_distributed, rank, world_size


def shard_loader(loader):
    """This process's shard of ``loader`` in a distributed run (``loader`` itself otherwise; None stays
    None). The original loader is left whole (pruning before training scores the global batches)."""
    if loader is None or not is_distributed():
        return loader
    if isinstance(loader, TensorLoader):
        shard = copy.copy(loader)  # shares the device-resident dataset
        shard.set_shard(rank(), world_size())
        return shard
    if isinstance(loader, FolderLoader):
        return ShardedFolderLoader(loader, rank(), world_size())
    raise ConfigError(f"a distributed run cannot split batches of a {type(loader).__name__}; allowed: the loaders "
                      f"of prunekit.data.build_loaders (TensorLoader, FolderLoader)")


class ShardedFolderLoader:
    """A :class:`FolderLoader` whose worker processes decode only this process's positions of every
    batch; samples, transforms and batch augmentation are those of the whole loader's batch."""

    def __init__(self, loader: FolderLoader, rank: int, world_size: int):
        last = loader.num_samples % loader.batch_size
        if loader.batch_size < world_size or (not loader.drop_last and 0 < last < world_size):
            raise ConfigError(f"batch_size={loader.batch_size} over {loader.num_samples} samples leaves a batch of "
                              f"fewer than {world_size} samples (one per process); allowed: batch_size >= "
                              f"{world_size} and drop_last=True or a last batch of >= {world_size}")
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):  # set_epoch, state_dict, num_classes ... of the whole loader
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        L = self.loader
        epoch = L._next_epoch
        L.epoch, L._next_epoch = epoch, epoch + 1
        n, bs = L.num_samples, L.batch_size
        if L.shuffle:
            order = torch.randperm(n, generator=generator(L.seed, L.stream, "epoch", epoch))
        else:
            order = torch.arange(n)
        spans = [(b * bs, min((b + 1) * bs, n)) for b in range(len(L))]
        L.dataset.epoch = epoch
        batches = DataLoader(L.dataset, batch_sampler=[order[lo + self.rank:hi:self.world_size].tolist()
                                                       for lo, hi in spans],
                             num_workers=L.num_workers, collate_fn=_collate, pin_memory=L.device.type == "cuda",
                             prefetch_factor=4 if L.num_workers else None)
        for b, batch in enumerate(batches):
            if isinstance(batch, _Failure):
                raise DataError(batch.message)
            x, y = (t.to(L.device, non_blocking=True) for t in batch)
            if L.batch_augment is not None:
                # the whole batch's draw, this process's positions: the single-process augmentation
                g = generator(L.seed, L.stream, "batch", epoch, b)
                lo, hi = spans[b]
                params = L.batch_augment.draw(g, hi - lo, tuple(x.shape[-2:]))
                params = {k: v[self.rank::self.world_size].to(L.device, non_blocking=True) for k, v in params.items()}
                x = L.batch_augment.apply(x, torch.arange(x.shape[0], device=L.device), params)
            yield torch.addcmul(L._bias, x.to(torch.float32), L._scale), y
