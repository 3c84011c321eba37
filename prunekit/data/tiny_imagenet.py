"""Tiny-ImageNet-200 (Le & Yang 2015; cs231n) from the original ``tiny-imagenet-200`` folder.

Layout: ``wnids.txt`` (200 WordNet ids), ``train/<wnid>/images/<wnid>_<i>.JPEG`` (500 per class),
``val/images/val_<i>.JPEG`` with labels in ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box``),
10,000 images. Class index = position of the wnid in sorted order, as ``ImageFolder`` assigns it in
the reference code (which reorganizes val into ``val/<wnid>/...``; that layout is accepted too).
The test split has no labels and is not read.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DataError
from .arrays import ArrayDataset
from .image_ops import IMAGE_EXTENSIONS
from .imagefolder import FolderLoader, FolderTransform, Sample
from .normalization import Normalization

FOLDER = "tiny-imagenet-200"
TRAIN_PER_CLASS = 500
VAL_SIZE = 10000
NUM_CLASSES = 200
IMAGE_SIZE = 64


def find_root(root: str | os.PathLike) -> Path:
    """The ``tiny-imagenet-200`` folder: ``root`` itself or ``root/tiny-imagenet-200``."""
    root = Path(root)
    for base in (root / FOLDER, root):
        if (base / "wnids.txt").is_file():
            return base
    raise DataError(f"{root / FOLDER / 'wnids.txt'}: file not found; expected the extracted {FOLDER} folder under {root}")


def _images_in(folder: Path) -> list[str]:
    out = []
    for dirpath, _, files in sorted(os.walk(folder)):
        out += [os.path.join(dirpath, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def tiny_imagenet_samples(root: str | os.PathLike, train: bool = True, *, check_counts: bool = True
                          ) -> tuple[list[Sample], list[str]]:
    """([(path, label)], sorted wnids) of the train or val split; :class:`DataError` on a bad tree."""
    base = find_root(root)
    try:
        wnids = sorted({w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()})
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{base / 'wnids.txt'}: cannot read ({e})") from None
    if not wnids:
        raise DataError(f"{base / 'wnids.txt'}: no class ids; expected {NUM_CLASSES} WordNet ids")
    if check_counts and len(wnids) != NUM_CLASSES:
        raise DataError(f"{base / 'wnids.txt'}: {len(wnids)} class ids; expected {NUM_CLASSES}")
    label_of = {w: i for i, w in enumerate(wnids)}
    samples: list[Sample] = []
    if train:
        for w in wnids:
            folder = base / "train" / w / "images"
            if not folder.is_dir():
                folder = base / "train" / w
            files = _images_in(folder) if folder.is_dir() else []
            if not files:
                raise DataError(f"{base / 'train' / w / 'images'}: no images; expected the training images of class {w}")
            if check_counts and len(files) != TRAIN_PER_CLASS:
                raise DataError(f"{folder}: {len(files)} images; expected {TRAIN_PER_CLASS}")
            samples += [(f, label_of[w]) for f in files]
        return samples, wnids
    ann = base / "val" / "val_annotations.txt"
    if ann.is_file():
        try:
            lines = ann.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{ann}: cannot read ({e})") from None
        for k, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise DataError(f"{ann}:{k}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt, got {line[:80]!r}")
            path = base / "val" / "images" / fields[0]
            if not path.is_file():
                raise DataError(f"{path}: file not found (listed in {ann.name} line {k})")
            samples.append((str(path), label_of[fields[1]]))
    else:  # reorganized by the reference scripts: val/<wnid>/[images/]*.JPEG
        for w in wnids:
            samples += [(f, label_of[w]) for f in _images_in(base / "val" / w)] if (base / "val" / w).is_dir() else []
        if not samples:
            raise DataError(f"{ann}: file not found; expected val/val_annotations.txt or val/<wnid>/ folders")
    if check_counts and len(samples) != VAL_SIZE:
        raise DataError(f"{base / 'val'}: {len(samples)} images; expected {VAL_SIZE}")
    return samples, wnids


def load_tiny_imagenet(root: str | os.PathLike, train: bool = True, *, check_counts: bool = True,
                       num_workers: int = 4, batch_size: int = 500) -> ArrayDataset:
    """Decode a whole split into uint8 N×3×64×64 (train: 100,000 images = 1.2 GB) with worker processes."""
    samples, wnids = tiny_imagenet_samples(root, train, check_counts=check_counts)
    loader = FolderLoader(samples, len(wnids), batch_size, transform=FolderTransform(mode="none", size=IMAGE_SIZE),
                          normalization=Normalization((0.0,) * 3, (1.0,) * 3), shuffle=False,
                          num_workers=num_workers, name="tiny_imagenet")
    images = torch.empty(len(samples), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.int64)
    i = 0
    for x, y in loader.uint8_batches(0):
        images[i:i + len(y)] = x
        labels[i:i + len(y)] = y
        i += len(y)
    return ArrayDataset(images, labels, len(wnids), f"tiny_imagenet/{'train' if train else 'val'}")
