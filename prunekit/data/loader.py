"""``TensorLoader``: a whole dataset held as uint8 on the training device, batches made there.

For datasets that fit in device memory (MNIST, CIFAR, Tiny-ImageNet at 1.2 GB) this replaces a
``DataLoader`` with worker processes: a batch is one gather from the resident tensor, augmented and
normalized in the same pass (:mod:`prunekit.data.augment`), with no per-sample Python and no host
synchronisation. All randomness of an epoch (order, crop offsets, flips) is drawn up front from a CPU
generator seeded by (seed, stream, epoch), so a run resumed at an epoch boundary, on any device, sees
exactly the batches an uninterrupted run sees.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from ..errors import ConfigError
from .arrays import ArrayDataset
from .augment import Augment
from .normalization import Normalization
from .rng import generator

Batch = tuple[torch.Tensor, torch.Tensor]

# LAP random-batch mode draws the indices of this many steps per chunk (one host->device copy each)
NORMALIZED_CACHE_BYTES = 1 << 30  # cache the normalised float set of an unaugmented loader up to 1 GiB
_RANDOM_CHUNK = 256


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} not allowed; allowed: an integer >= {minimum}")
    return value


class TensorLoader:
    """Iterate ``(x, y)`` batches of a device-resident :class:`ArrayDataset`.

    ``x`` is float32 N×C×H×W, augmented (train) and normalized; ``y`` int64; both on ``device``.
    Epoch ``e`` shuffles with a generator seeded by ``(seed, stream, e)``: call :meth:`set_epoch`
    before iterating (as with ``DistributedSampler``); without it each new iteration advances the
    epoch by one. ``stream`` names independent streams over the same data (BiP's second loader).
    The last partial batch is kept unless ``drop_last``. ``len(loader)`` = batches per epoch.
    :meth:`random_batches` gives LAP's sampling (each step an independent uniform batch).
    """

    def __init__(self, data: ArrayDataset, batch_size: int, *, shuffle: bool = True,
                 augment: Augment | None = None, normalization: Normalization | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, drop_last: bool = False,
                 stream: str = "train"):
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        if len(data) == 0:
            raise ConfigError(f"dataset {data.name!r} is empty; a loader needs at least one sample")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device={device!r} not allowed; allowed: a torch device such as 'cpu' or 'cuda'") from None
        self.data = data.to(self.device)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = None if augment is None or augment.is_identity else augment
        if self.augment is not None:
            self.augment.check(tuple(data.images.shape[-2:]))
        channels = data.images.shape[1]
        self.normalization = normalization or Normalization((0.0,) * channels, (1.0,) * channels, "none")
        if len(self.normalization.mean) != channels:
            raise ConfigError(f"normalization has {len(self.normalization.mean)} channels, {data.name} has {channels}")
        self._scale, self._bias = self.normalization.affine(self.device)
        self._normalized: torch.Tensor | None = None  # float copy of the whole set, made on first use
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.stream = stream
        self.epoch = 0  # epoch of the current / last iteration
        self._next_epoch = 0
        self.rank, self.world_size = 0, 1  # this process's share of every batch (set_shard)
        if self.drop_last and len(data) < batch_size:
            raise ConfigError(f"batch_size={batch_size} with drop_last=True leaves no batch of the "
                              f"{len(data)} samples of {data.name}")

    # -- sizes --------------------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return len(self.data)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # -- epochs -------------------------------------------------------------------------------------

    def set_shard(self, rank: int, world_size: int) -> None:
        """Yield only positions ``rank, rank + world_size, ...`` of every batch: data-parallel training
        splits each global batch of ``batch_size`` across ``world_size`` processes, which all draw the
        same epoch plan (:mod:`prunekit.distributed`)."""
        _check_int("world_size", world_size, 1)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank!r} not allowed; allowed: an integer in [0, {world_size})")
        last = self.num_samples % self.batch_size
        if self.batch_size < world_size or (not self.drop_last and 0 < last < world_size):
            raise ConfigError(f"batch_size={self.batch_size} over {self.num_samples} samples leaves a batch of fewer "
                              f"than {world_size} samples (one per process); allowed: batch_size >= {world_size} "
                              f"and drop_last=True or a last batch of >= {world_size}")
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch ``epoch`` (its order and augmentation depend only on it)."""
        self._next_epoch = _check_int("epoch", epoch, 0)

    def state_dict(self) -> dict:
        return {"next_epoch": self._next_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["next_epoch"]))

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            # pinned + non_blocking: the copy does not stall the host (once per epoch / chunk)
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sample order, augmentation parameters per position) of ``epoch``, on the CPU."""
        g = generator(self.seed, self.stream, "epoch", epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        params = self.augment.draw(g, n, tuple(self.data.images.shape[-2:])) if self.augment else {}
        return order, params

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._next_epoch
        self.epoch, self._next_epoch = epoch, epoch + 1
        order, params = self.epoch_plan(epoch)
        order = self._to_device(order)
        params = {k: self._to_device(v) for k, v in params.items()}
        n, bs = self.num_samples, self.batch_size
        for b in range(len(self)):
            sl = slice(b * bs + self.rank, min((b + 1) * bs, n), self.world_size)
            yield self._batch(order[sl], {k: v[sl] for k, v in params.items()})

    def _batch(self, index: torch.Tensor, params: dict[str, torch.Tensor]) -> Batch:
        images = self.data.images
        if self.augment is None and images.numel() * 4 <= NORMALIZED_CACHE_BYTES:
            # without augmentation a batch is a row gather of the normalised set: one kernel per batch
            # instead of three (about 4x less loader time per MNIST batch on the CPU); same values
            if self._normalized is None:
                self._normalized = torch.addcmul(self._bias, images.to(torch.float32), self._scale)
            return self._normalized.index_select(0, index), self.data.labels[index]
        x = self.augment.apply(images, index, params) if self.augment else images[index]
        # uint8 (or float 0..255) -> normalized float32 in one fused multiply-add
        x = torch.addcmul(self._bias, x.to(torch.float32), self._scale)
        return x, self.data.labels[index]

    # -- LAP: independent random batches ---------------------------------------------------------------

    def random_batches(self, num_steps: int, *, start_step: int = 0, batch_size: int | None = None
                       ) -> Iterator[Batch]:
        """``num_steps`` batches, each ``batch_size`` samples drawn uniformly without replacement,
        independently across steps (LAP ``train.py: BatchSampler`` uses ``random.sample`` per step).

        Step ``s`` depends only on (seed, stream, s), so ``start_step`` resumes mid-run exactly.
        Indices are drawn by rejection (i.i.d. draws, rows with a repeat redrawn), which is exactly
        uniform over distinct tuples and costs O(B) per step instead of O(N).
        """
        _check_int("num_steps", num_steps, 0)
        _check_int("start_step", start_step, 0)
        bs = _check_int("batch_size", batch_size if batch_size is not None else self.batch_size, 1)
        n = self.num_samples
        if bs > n:
            raise ConfigError(f"batch_size={bs} not allowed for random batches of {n} samples; allowed: <= {n}")
        hw = tuple(self.data.images.shape[-2:])
        step, end = start_step, start_step + num_steps
        while step < end:
            chunk = step // _RANDOM_CHUNK
            g = generator(self.seed, self.stream, "random", bs, chunk)
            idx = _distinct_rows(g, _RANDOM_CHUNK, bs, n)
            params = self.augment.draw(g, _RANDOM_CHUNK * bs, hw) if self.augment else {}
            lo = step - chunk * _RANDOM_CHUNK
            hi = min(_RANDOM_CHUNK, end - chunk * _RANDOM_CHUNK)
            idx = self._to_device(idx[lo:hi].reshape(-1))
            params = {k: self._to_device(v[lo * bs:hi * bs]) for k, v in params.items()}
            for i in range(hi - lo):
                sl = slice(i * bs + self.rank, (i + 1) * bs, self.world_size)
                yield self._batch(idx[sl], {k: v[sl] for k, v in params.items()})
            step = (chunk + 1) * _RANDOM_CHUNK

    def __repr__(self) -> str:
        return (f"TensorLoader({self.data.name}, n={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device}, stream={self.stream!r})")


def _distinct_rows(g: torch.Generator, rows: int, k: int, n: int) -> torch.Tensor:
    """``rows`` × ``k`` int64, each row ``k`` distinct uniform indices in [0, n) in random order."""
    if k * k > 2 * n:
        # large batches relative to n: a random permutation prefix per row
        return torch.rand(rows, n, generator=g).argsort(dim=1)[:, :k]
    out = torch.randint(0, n, (rows, k), generator=g)
    while True:
        s = out.sort(dim=1).values
        bad = (s[:, 1:] == s[:, :-1]).any(dim=1) if k > 1 else torch.zeros(rows, dtype=torch.bool)
        nbad = int(bad.sum())
        if nbad == 0:
            return out
        out[bad] = torch.randint(0, n, (nbad, k), generator=g)
