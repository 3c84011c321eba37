"""A user's own image-classification dataset, named by import path or entry point.

The factory takes no arguments and returns either a :class:`~prunekit.data.specs.DatasetSpec` (the
same description prunekit's own datasets have) or the arrays: a mapping ``{"train": (images, labels),
"test": (images, labels)}`` (an :class:`~prunekit.data.arrays.ArrayDataset` per split works too) with
images uint8 ``N×C×H×W`` (or ``N×H×W``) and integer labels in ``[0, classes)``. Arrays are held as tensors
and loaded like the built-in tensor datasets (no augmentation unless the factory's spec names one).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..plugins import entry_point, is_import_path, load_object
from .arrays import ArrayDataset
from .augment import NO_AUGMENT
from .specs import DatasetSpec


def _as_dataset(value: Any, name: str, split: str, num_classes: int | None) -> ArrayDataset:
    if isinstance(value, ArrayDataset):
        return value
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise DataError(f"dataset {name!r}: split {split!r} is a {type(value).__name__}; allowed: (images, labels)")
    images, labels = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in value)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dtype != torch.uint8:
        raise DataError(f"dataset {name!r}: {split} images are {images.dtype}; allowed: uint8 N×C×H×W (0-255)")
    labels = labels.to(torch.int64)
    classes = num_classes if num_classes is not None else int(labels.max()) + 1
    return ArrayDataset(images.contiguous(), labels, classes, f"{name}/{split}")


@functools.lru_cache(maxsize=8)
def user_spec(name: str):
    """The spec of a user dataset ``name``, or ``None`` when ``name`` is neither an import path nor an
    entry point (the caller then raises the registry's "did you mean" error)."""
    factory = load_object(name, "data.name") if is_import_path(name) else entry_point("prunekit.datasets", name)
    if factory is None:
        return None
    value = factory()
    if isinstance(value, DatasetSpec):
        return value
    if not (isinstance(value, Mapping) and {"train", "test"} <= set(value)):
        raise ConfigError(f"data.name={name!r} returned a {type(value).__name__}; allowed: a DatasetSpec or "
                          "{'train': (images, labels), 'test': (images, labels)}")
    train = _as_dataset(value["train"], name, "train", None)
    test = _as_dataset(value["test"], name, "test", train.num_classes)
    if tuple(train.images.shape[1:]) != tuple(test.images.shape[1:]):
        raise DataError(f"dataset {name!r}: train images {tuple(train.images.shape[1:])} and test images "
                        f"{tuple(test.images.shape[1:])} differ in shape")
    splits = {"train": train, "test": test}
    c, h, w = train.images.shape[1:]
    return DatasetSpec(
        name=name, num_classes=train.num_classes, channels=int(c), image_size=(int(h), int(w)),
        train_size=len(train.labels), test_size=len(test.labels), storage="tensor",
        augmentations={"none": NO_AUGMENT}, reader=lambda root, wanted, **_: {s: splits[s] for s in wanted},
        needs_root=False, no_download_reason="a user dataset", description=f"user dataset {name}")
