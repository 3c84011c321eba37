"""ImageFolder trees (ImageNet) through a worker-process ``DataLoader``.

Datasets too large for device memory are decoded from JPEG in ``num_workers`` processes, transformed
per image on uint8 tensors (:mod:`prunekit.data.image_ops`), collated as uint8 and normalized on the
training device. Randomness is a generator per (seed, stream, epoch, sample index), so the batches
do not depend on the number of workers or on which worker decoded what.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from . import image_ops
from .augment import Augment
from .normalization import Normalization
from .rng import generator

Sample = tuple[str, int]


def image_folder_samples(root: str | os.PathLike) -> tuple[list[Sample], list[str]]:
    """``root/<class>/**/<image>`` -> ([(path, class index)], sorted class names), like torchvision."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected an ImageFolder tree root/<class>/<image>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders; expected an ImageFolder tree root/<class>/<image>")
    samples: list[Sample] = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, _, files in sorted(os.walk(root / cls, followlinks=True)):
            found += [os.path.join(dirpath, f) for f in sorted(files)
                      if f.lower().endswith(image_ops.IMAGE_EXTENSIONS)]
        if not found:
            raise DataError(f"{root / cls}: no image files; expected one of {', '.join(image_ops.IMAGE_EXTENSIONS)}")
        samples += [(p, label) for p in found]
    return samples, classes


@dataclass(frozen=True)
class FolderTransform:
    """Per-image transform of the folder pipeline.

    ``mode="train"``: ``RandomResizedCrop(size, scale, ratio)`` + flip (ImageNet standard);
    ``mode="eval"``: ``Resize(resize)`` + ``CenterCrop(size)``; ``mode="none"``: decode only, every
    image must already be ``size`` (Tiny-ImageNet's 64×64 loaded into memory).
    """

    mode: str = "train"
    size: int = 224
    resize: int = 256
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("train", "eval", "none"):
            raise ConfigError(f"mode={self.mode!r} not allowed; allowed: train, eval, none")

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None, source: str) -> torch.Tensor:
        if self.mode == "train":
            assert gen is not None
            img = image_ops.random_resized_crop(img, gen, (self.size, self.size), self.scale, self.ratio)
            if self.flip and bool(torch.rand(1, generator=gen) < 0.5):
                img = img.flip(-1)
            return img
        if self.mode == "eval":
            return image_ops.center_crop(image_ops.resize_shorter(img, self.resize), (self.size, self.size))
        if tuple(img.shape[-2:]) != (self.size, self.size):
            raise DataError(f"{source}: image is {img.shape[-2]}x{img.shape[-1]}; expected {self.size}x{self.size}")
        return img


class FolderDataset(Dataset):
    """``(uint8 3×S×S, label)`` per sample; random transforms seeded by (seed, stream, epoch, index)."""

    def __init__(self, samples: Sequence[Sample], transform: FolderTransform, seed: int = 0, stream: str = "train"):
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.stream = stream
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | "_Failure", int]:
        path, label = self.samples[i]
        gen = generator(self.seed, self.stream, self.epoch, i) if self.transform.mode == "train" else None
        try:
            return self.transform(image_ops.decode_image(path), gen, path), label
        except DataError as e:
            # carried to the main process as data: a worker's exception would arrive wrapped in a traceback
            return _Failure(str(e)), -1


@dataclass(frozen=True)
class _Failure:
    message: str


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor] | _Failure:
    for img, _ in batch:
        if isinstance(img, _Failure):
            return img
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)


class FolderLoader:
    """Batches ``(x float32 normalized, y int64)`` on ``device`` from image files, decoded by workers.

    Same interface as :class:`~prunekit.data.loader.TensorLoader` (``set_epoch``, ``len``, iteration);
    the order of epoch ``e`` comes from a generator seeded by ``(seed, stream, e)``. ``batch_augment``
    (e.g. pad-crop + flip for 64×64 Tiny-ImageNet) runs batched on ``device`` after decoding.
    """

    def __init__(self, samples: Sequence[Sample], num_classes: int, batch_size: int, *,
                 transform: FolderTransform, normalization: Normalization, shuffle: bool = True,
                 device: torch.device | str = "cpu", seed: int = 0, drop_last: bool = False,
                 num_workers: int = 4, stream: str = "train", name: str = "folder",
                 batch_augment: Augment | None = None):
        if not samples:
            raise ConfigError(f"dataset {name!r} is empty; a loader needs at least one sample")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} not allowed; allowed: an integer >= 1")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers={num_workers!r} not allowed; allowed: an integer >= 0")
        self.dataset = FolderDataset(samples, transform, seed, stream)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.seed = seed
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.stream = stream
        self.name = name
        self.normalization = normalization
        self._scale, self._bias = normalization.affine(self.device)
        # a batched tensor augmentation applied on the device after decoding (fixed-size images only)
        self.batch_augment = None if batch_augment is None or batch_augment.is_identity else batch_augment
        self.epoch = 0
        self._next_epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch={epoch!r} not allowed; allowed: an integer >= 0")
        self._next_epoch = epoch

    def state_dict(self) -> dict:
        return {"next_epoch": self._next_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["next_epoch"]))

    def uint8_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Raw collated ``(uint8 images, labels)`` of ``epoch`` on the CPU."""
        self.dataset.epoch = epoch  # workers get a copy of the dataset with this epoch
        n = self.num_samples
        if self.shuffle:
            order = torch.randperm(n, generator=generator(self.seed, self.stream, "epoch", epoch)).tolist()
        else:
            order = list(range(n))
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order, num_workers=self.num_workers,
                            collate_fn=_collate, drop_last=self.drop_last,
                            pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if self.num_workers else None)
        for batch in loader:
            if isinstance(batch, _Failure):
                raise DataError(batch.message)
            yield batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch
        self.epoch, self._next_epoch = epoch, epoch + 1
        for b, (x, y) in enumerate(self.uint8_batches(epoch)):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.batch_augment is not None:
                g = generator(self.seed, self.stream, "batch", epoch, b)
                params = self.batch_augment.draw(g, x.shape[0], tuple(x.shape[-2:]))
                params = {k: v.to(self.device, non_blocking=True) for k, v in params.items()}
                x = self.batch_augment.apply(x, torch.arange(x.shape[0], device=self.device), params)
            yield torch.addcmul(self._bias, x.to(torch.float32), self._scale), y

    def __repr__(self) -> str:
        return (f"FolderLoader({self.name}, n={self.num_samples}, batch_size={self.batch_size}, "
                f"transform={self.dataset.transform}, workers={self.num_workers}, device={self.device})")
