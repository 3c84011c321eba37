"""CIFAR-10 / CIFAR-100 readers for the official "python version" (Krizhevsky 2009).

Accepted layouts under ``root``: the extracted folder (``cifar-10-batches-py/`` or ``cifar-100-python/``),
``root`` being that folder itself, or the original ``.tar.gz`` archive (read in memory, never extracted).
Batches are pickles of ``{b'data': uint8 ndarray N×3072, b'labels' | b'fine_labels': [int] ...}``; the
3072 bytes of a row are the R, G and B planes of a 32×32 image, so a reshape gives N×3×32×32 directly.
They are decoded with :func:`~prunekit.data.safe_pickle.safe_loads` (no code execution).
"""
from __future__ import annotations

import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .arrays import ArrayDataset
from .safe_pickle import safe_loads


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    # official sample count per file
    counts: dict[str, int]


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        label_key=b"labels", num_classes=10,
        counts={**{f"data_batch_{i}": 10000 for i in range(1, 6)}, "test_batch": 10000},
    ),
    "cifar100": CifarLayout(
        folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        train_files=("train",), test_files=("test",), label_key=b"fine_labels", num_classes=100,
        counts={"train": 50000, "test": 10000},
    ),
}


def _layout(variant: str) -> CifarLayout:
    try:
        return CIFAR_LAYOUTS[variant]
    except KeyError:
        raise ConfigError(f"variant={variant!r} is not a CIFAR dataset; allowed: {', '.join(CIFAR_LAYOUTS)}") from None


def _read_members(root: Path, layout: CifarLayout, names: list[str]) -> dict[str, tuple[str, bytes]]:
    """{name: (source description, bytes)} from the extracted folder or, failing that, the archive."""
    root = Path(root)
    for folder in (root / layout.folder, root):
        if all((folder / n).is_file() for n in names):
            out = {}
            for n in names:
                try:
                    out[n] = (str(folder / n), (folder / n).read_bytes())
                except OSError as e:
                    raise DataError(f"{folder / n}: cannot read file ({e.strerror or e})") from None
            return out
    archive = root if root.is_file() else root / layout.archive
    if not archive.is_file():
        raise DataError(f"{root / layout.folder / names[0]}: file not found; expected the extracted folder "
                        f"{layout.folder}/ with {', '.join(names)}, or the archive {layout.archive}, under {root}")
    wanted = {f"{layout.folder}/{n}": n for n in names}
    out = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                key = member.name[2:] if member.name.startswith("./") else member.name
                if key in wanted and member.isfile():
                    f = tar.extractfile(member)
                    if f is None:
                        continue
                    out[wanted[key]] = (f"{archive}:{key}", f.read())
                    if len(out) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}); "
                        f"expected the official {layout.archive}") from None
    missing = [k for k, n in wanted.items() if n not in out]
    if missing:
        raise DataError(f"{archive}: missing member(s) {', '.join(missing)}; expected the official {layout.archive}")
    return out


def _decode_batch(source: str, raw: bytes, layout: CifarLayout, expected_count: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_loads(raw, source=source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a pickled dict batch, got {type(batch).__name__}")
    label_key = layout.label_key
    # files re-pickled by Python 3 have str keys
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(label_key, batch.get(label_key.decode()))
    if data is None or labels is None:
        raise DataError(f"{source}: batch lacks key b'data' or {label_key!r}; keys are {sorted(map(repr, batch))}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{source}: b'data' must be a uint8 array N×3072, got {type(data).__name__} "
                        f"{getattr(data, 'dtype', '')} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: {label_key!r} must be a list of ints") from None
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{source}: {labels.size} labels for {data.shape[0]} images; expected equal counts")
    if expected_count is not None and data.shape[0] != expected_count:
        raise DataError(f"{source}: {data.shape[0]} samples; expected {expected_count} (official batch size)")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(f"{source}: labels span [{labels.min()}, {labels.max()}]; expected 0..{layout.num_classes - 1}")
    return data, labels


def read_cifar(root: str | os.PathLike, variant: str = "cifar10", splits: tuple[str, ...] = ("train", "test"),
               *, check_counts: bool = True) -> dict[str, ArrayDataset]:
    """Read the requested splits (``"train"``, ``"test"``) in one pass over the files or archive.

    ``check_counts`` checks the official sample count of every batch file (turn it off for subsets or
    generated fixtures); consistency of images, labels and label range is always checked.
    """
    layout = _layout(variant)
    files = {"train": layout.train_files, "test": layout.test_files}
    for s in splits:
        if s not in files:
            raise ConfigError(f"split={s!r} not allowed; allowed: train, test")
    names = [n for s in splits for n in files[s]]
    members = _read_members(Path(root), layout, names)
    out = {}
    for s in splits:
        parts = [_decode_batch(*members[n], layout, layout.counts[n] if check_counts else None) for n in files[s]]
        data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        out[s] = ArrayDataset(
            images=torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy()),
            labels=torch.from_numpy(labels.copy()),
            num_classes=layout.num_classes,
            name=f"{variant}/{s}",
        )
    return out


def load_cifar(root: str | os.PathLike, train: bool = True, *, variant: str = "cifar10",
               check_counts: bool = True) -> ArrayDataset:
    """CIFAR-10 (``variant="cifar10"``) or CIFAR-100 (fine labels) as uint8 N×3×32×32."""
    split = "train" if train else "test"
    return read_cifar(root, variant, (split,), check_counts=check_counts)[split]
