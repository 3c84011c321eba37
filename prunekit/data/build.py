"""One entry point from a dataset name to ready loaders: :func:`build_loaders`, and :func:`load_arrays`
for raw access. Splits follow the papers:

* ``"official"`` — the official train / test split (default).
* ``"granet45k"`` — GraNet's CIFAR-10 setting (``--valid_split 0.1``): train on the **first** 90% of the
  training images (45,000 of CIFAR-10's 50,000); the last 10% become ``loaders.val`` (never used by GraNet).
* ``"bip"`` — BiP's second mini-batch stream: ``loaders.val`` is another augmented, independently
  shuffled loader over the **same** training set (the reference flips the copy's order, which an
  independent shuffle makes irrelevant). It shares the device tensor with ``loaders.train``.
* ``"holdout"`` — the last ``holdout`` training images become an un-augmented validation loader.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ConfigError, DataError
from .arrays import ArrayDataset
from .augment import NO_AUGMENT, Augment
from .download import verify
from .imagefolder import FolderLoader, FolderTransform, image_folder_samples
from .loader import TensorLoader
from .normalization import Normalization
from .specs import DatasetSpec, get_spec, resolve_root
from .tiny_imagenet import IMAGE_SIZE, tiny_imagenet_samples

SPLITS = ("official", "granet45k", "bip", "holdout")
STORAGES = ("tensor", "folder")
Loader = TensorLoader | FolderLoader


@dataclass
class Loaders:
    """Result of :func:`build_loaders`. Unpacks as ``train, test, spec = build_loaders(...)``;
    ``val`` is the split's extra loader (None for ``"official"``)."""

    train: Loader
    test: Loader
    spec: DatasetSpec
    val: Loader | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.train, self.test, self.spec))


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} not allowed; allowed: an integer >= {minimum}")
    return value


def _bool_arg(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} not allowed; allowed: True or False")
    return value


def _device_arg(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} not allowed; allowed: 'cpu', 'cuda', 'cuda:N', 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} not allowed: CUDA is not available here; allowed: 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device={device!r} not allowed: MPS is not available here; allowed: 'cpu'")
    return dev


def _spec_with_options(spec: DatasetSpec, options: dict[str, Any] | None) -> tuple[DatasetSpec, dict[str, Any]]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise ConfigError(f"options={{{unknown[0]!r}: ...}} not allowed for dataset {spec.name!r}; allowed keys: {allowed}")
    if spec.name == "synthetic" and options:
        merged = {**spec.options, **options}
        try:
            shape = tuple(int(v) for v in merged["shape"])
        except (TypeError, ValueError):
            shape = ()
        if len(shape) != 3:
            raise ConfigError(f"options shape={merged['shape']!r} not allowed; allowed: (channels, height, width)")
        spec = dataclasses.replace(spec, num_classes=merged["num_classes"], channels=shape[0], image_size=shape[1:],
                                   train_size=merged["num_train"], test_size=merged["num_test"])
    return spec, options


def _read(spec: DatasetSpec, root: str | os.PathLike | None, splits: tuple[str, ...], *, check_counts: bool,
          verify_checksums: bool, num_workers: int, options: dict[str, Any]) -> dict[str, ArrayDataset]:
    if spec.reader is None:
        raise ConfigError(f"dataset {spec.name!r} is streamed from files ({spec.storage} storage) and cannot be "
                          f"loaded as arrays; use build_loaders({spec.name!r}, ...)")
    where = resolve_root(spec, root)
    if verify_checksums:
        verify(spec.name, root)
    return spec.reader(where, splits, check_counts=check_counts, num_workers=num_workers, **options)


def load_arrays(name: str, root: str | os.PathLike | None = None, train: bool = True, *, check_counts: bool = True,
                verify_checksums: bool = False, num_workers: int = 4, options: dict[str, Any] | None = None
                ) -> ArrayDataset:
    """The raw uint8 :class:`ArrayDataset` of one split (``train=False``: the test / val split).

    ``root`` is the folder with the dataset's files (or its parent holding ``<name>/``); not needed
    for ``sklearn_digits`` and ``synthetic``. ``check_counts`` checks the official sample counts;
    ``verify_checksums`` checks the known md5/sha256 of the files present first.
    ``options``: dataset-specific settings (``synthetic``: num_train, num_test, num_classes, shape,
    data_seed, noise; ``sklearn_digits``: split_seed).
    """
    spec, options = _spec_with_options(get_spec(name), options)
    _bool_arg("train", train)
    _int_arg("num_workers", num_workers, 0)
    split = "train" if train else "test"
    return _read(spec, root, (split,), check_counts=check_counts, verify_checksums=verify_checksums,
                 num_workers=num_workers, options=options)[split]


def _resolve_augment(spec: DatasetSpec, augment: Any, normalization: str | None) -> Any:
    if augment is True:
        preset = normalization if normalization in spec.augmentations else None
        return spec.augmentation(preset)
    if augment is False or augment is None:
        return NO_AUGMENT if spec.storage == "tensor" else spec.eval_transform
    if isinstance(augment, str):
        return spec.augmentation(augment)
    if isinstance(augment, (Augment, FolderTransform)):
        return augment
    raise ConfigError(f"augment={augment!r} not allowed; allowed: True, False, an Augment, or one of "
                      f"{', '.join(spec.augmentations)}")


def build_loaders(name: str, root: str | os.PathLike | None = None, batch_size: int = 128, *,
                  test_batch_size: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                  augment: bool | str | Augment | FolderTransform = True,
                  normalization: str | Normalization | None = None,
                  split: str = "official", holdout: int | None = None, drop_last: bool = False,
                  storage: str | None = None, num_workers: int = 4, check_counts: bool = True,
                  verify_checksums: bool = False, options: dict[str, Any] | None = None) -> Loaders:
    """Train and test loaders for dataset ``name`` (see the registry, ``DATASETS.names()``).

    ``normalization``: a convention of the dataset (``"granet"``, ``"dpai"``, ``"bip"``, ``"lap"``,
    ``"standard"``, ``"none"``; default: the dataset's first) or a :class:`Normalization`. ``augment``: ``True`` = the preset of the
    same paper as ``normalization`` if the dataset has one, else its default; ``False`` = none; a preset
    name; or an :class:`Augment`. ``split``: see the module docstring. ``storage``: ``"tensor"``
    (dataset resident on ``device``) or ``"folder"`` (JPEGs decoded by ``num_workers`` processes;
    ImageNet, optionally Tiny-ImageNet). Returns :class:`Loaders` (unpacks to train, test, spec).
    """
    spec, options = _spec_with_options(get_spec(name), options)
    _int_arg("batch_size", batch_size, 1)
    test_batch_size = batch_size if test_batch_size is None else _int_arg("test_batch_size", test_batch_size, 1)
    _int_arg("seed", seed, 0)
    _int_arg("num_workers", num_workers, 0)
    _bool_arg("drop_last", drop_last)
    _bool_arg("check_counts", check_counts)
    _bool_arg("verify_checksums", verify_checksums)
    dev = _device_arg(device)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} not allowed; allowed: {', '.join(SPLITS)}")
    if split == "holdout":
        _int_arg("holdout", holdout, 1)
    elif holdout is not None:
        raise ConfigError(f"holdout={holdout!r} not allowed with split={split!r}; allowed: None (or split='holdout')")
    storage = storage or spec.storage
    if storage not in STORAGES or (storage != spec.storage and not spec.folder_storage):
        allowed = [spec.storage] + (["folder"] if spec.folder_storage else [])
        raise ConfigError(f"storage={storage!r} not allowed for dataset {spec.name!r}; allowed: {', '.join(allowed)}")
    if isinstance(normalization, Normalization):
        norm, normalization = normalization, None
        if len(norm.mean) != spec.channels:
            raise ConfigError(f"normalization with {len(norm.mean)} channels not allowed for dataset {spec.name!r} "
                              f"with {spec.channels}")
    else:
        norm = spec.normalization(normalization)
    aug = _resolve_augment(spec, augment, normalization)
    if storage == "folder":
        return _build_folder(spec, root, batch_size, test_batch_size, seed, dev, aug, norm, split, drop_last,
                             num_workers, check_counts, verify_checksums)

    if not isinstance(aug, Augment):
        raise ConfigError(f"augment={augment!r} is a folder transform; dataset {spec.name!r} with storage "
                          f"'tensor' needs an Augment")
    data = _read(spec, root, ("train", "test"), check_counts=check_counts, verify_checksums=verify_checksums,
                 num_workers=num_workers, options=options)
    train_ds, test_ds = data["train"], data["test"]
    val_ds = None
    n = len(train_ds)
    if split == "granet45k":
        cut = int(math.floor(0.9 * n))  # GraNet: split = floor((1 - valid_split) * len(full_dataset))
        train_ds, val_ds = train_ds.subset(slice(0, cut), f"{train_ds.name}[:{cut}]"), \
            train_ds.subset(slice(cut, n), f"{train_ds.name}[{cut}:]")
    elif split == "holdout":
        if holdout >= n:
            raise ConfigError(f"holdout={holdout} not allowed: the training set has {n} images; allowed: 1..{n - 1}")
        train_ds, val_ds = train_ds.subset(slice(0, n - holdout), f"{train_ds.name}[:{n - holdout}]"), \
            train_ds.subset(slice(n - holdout, n), f"{train_ds.name}[{n - holdout}:]")
    train_ds = train_ds.to(dev)  # moved once; the BiP stream shares it
    common = dict(normalization=norm, device=dev, seed=seed)
    train = TensorLoader(train_ds, batch_size, shuffle=True, augment=aug, drop_last=drop_last, stream="train", **common)
    test = TensorLoader(test_ds, test_batch_size, shuffle=False, augment=None, stream="test", **common)
    val = None
    if split == "bip":
        val = TensorLoader(train_ds, batch_size, shuffle=True, augment=aug, drop_last=drop_last, stream="bip_val",
                           **common)
    elif val_ds is not None:
        val = TensorLoader(val_ds, test_batch_size, shuffle=False, augment=None, stream="val", **common)
    return Loaders(train, test, spec, val)


def _build_folder(spec: DatasetSpec, root: Any, batch_size: int, test_batch_size: int, seed: int,
                  dev: torch.device, aug: Any, norm: Any, split: str, drop_last: bool, num_workers: int,
                  check_counts: bool, verify_checksums: bool) -> Loaders:
    if split not in ("official", "bip"):
        raise ConfigError(f"split={split!r} not allowed with folder storage; allowed: official, bip")
    where = resolve_root(spec, root)
    if verify_checksums:
        verify(spec.name, root)
    batch_augment = None
    if spec.name == "tiny_imagenet":
        train_samples, classes = tiny_imagenet_samples(where, True, check_counts=check_counts)
        test_samples, _ = tiny_imagenet_samples(where, False, check_counts=check_counts)
        if isinstance(aug, Augment):
            # decode only; pad-crop / resized-crop + flip run batched on the device
            batch_augment, aug = aug, FolderTransform("none", size=IMAGE_SIZE)
        eval_tf = FolderTransform("none", size=IMAGE_SIZE)
    else:
        train_samples, classes = image_folder_samples(Path(where) / "train")
        test_samples, test_classes = image_folder_samples(Path(where) / "val")
        if test_classes != classes:
            raise DataError(f"{Path(where) / 'val'}: {len(test_classes)} class folders differ from the "
                            f"{len(classes)} of {Path(where) / 'train'}; expected the same class names")
        if check_counts and spec.num_classes and len(classes) != spec.num_classes:
            raise DataError(f"{Path(where) / 'train'}: {len(classes)} classes; expected {spec.num_classes}")
        if not isinstance(aug, FolderTransform):
            raise ConfigError(f"augment={aug!r} not allowed for dataset {spec.name!r}; allowed: True, False, "
                              f"a FolderTransform, or one of {', '.join(spec.augmentations)}")
        eval_tf = spec.eval_transform
    common = dict(normalization=norm, device=dev, seed=seed, num_workers=num_workers, name=spec.name)
    train = FolderLoader(train_samples, len(classes), batch_size, transform=aug, shuffle=True, drop_last=drop_last,
                         stream="train", batch_augment=batch_augment, **common)
    test = FolderLoader(test_samples, len(classes), test_batch_size, transform=eval_tf, shuffle=False,
                        stream="test", **common)
    val = None
    if split == "bip":
        val = FolderLoader(train_samples, len(classes), batch_size, transform=aug, shuffle=True, drop_last=drop_last,
                           stream="bip_val", batch_augment=batch_augment, **common)
    return Loaders(train, test, spec, val)
