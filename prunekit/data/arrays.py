"""In-memory datasets: uint8 images and int64 labels as tensors.

Every reader in :mod:`prunekit.data` returns an :class:`ArrayDataset`; loaders, splits and the
registry work on it. Keeping raw uint8 (not float) costs 4x less memory and lets the training
device do the conversion and normalization in the same pass as augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError


@dataclass(frozen=True)
class ArrayDataset:
    """A labelled image dataset held as tensors.

    ``images``: uint8, N×C×H×W (channels first, as the models expect); ``labels``: int64, N, each in
    ``[0, num_classes)``; ``name``: where it came from (``"cifar10/train"``), used in messages.
    Construction validates shapes, dtypes and the label range and raises :class:`DataError`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if not isinstance(imgs, torch.Tensor) or imgs.dtype != torch.uint8 or imgs.dim() != 4:
            raise DataError(f"{self.name}: images must be a uint8 N×C×H×W tensor, got "
                            f"{getattr(imgs, 'dtype', type(imgs))} of shape {tuple(getattr(imgs, 'shape', ()))}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataError(f"{self.name}: labels must be an int64 vector, got "
                            f"{getattr(labels, 'dtype', type(labels))} of shape {tuple(getattr(labels, 'shape', ()))}")
        if imgs.shape[0] != labels.shape[0]:
            raise DataError(f"{self.name}: {imgs.shape[0]} images but {labels.shape[0]} labels; expected equal counts")
        if self.num_classes < 1:
            raise DataError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise DataError(f"{self.name}: labels span [{lo}, {hi}]; expected values in "
                                f"[0, {self.num_classes - 1}]")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "ArrayDataset":
        """The same data on ``device`` (no copy when it is already there)."""
        images, labels = self.images.to(device), self.labels.to(device)
        if images is self.images and labels is self.labels:
            return self
        return ArrayDataset(images, labels, self.num_classes, self.name)

    def subset(self, index: torch.Tensor | slice, name: str | None = None) -> "ArrayDataset":
        """Rows ``index`` (a slice, or an index tensor) as a new dataset named ``name``."""
        return ArrayDataset(self.images[index], self.labels[index], self.num_classes, name or self.name)

    def class_counts(self) -> list[int]:
        """Number of samples per class, ``num_classes`` long."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()
