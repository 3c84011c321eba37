"""MNIST / Fashion-MNIST readers for the original IDX files (LeCun et al. 1998; Xiao et al. 2017).

IDX layout: a 4-byte big-endian magic ``00 00 <type> <ndim>`` (``0x803`` = uint8 with 3 dims for
images, ``0x801`` = uint8 vector for labels), then ``ndim`` big-endian uint32 sizes, then the payload.
Files may be gzip-compressed (detected from the content, not the name).
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .arrays import ArrayDataset

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# IDX type byte -> numpy big-endian dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# torchvision keeps the same files under <root>/<Name>/raw
_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error, ValueError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e}); expected a complete "
                            f"gzip-compressed IDX file") from None
    return raw


def parse_idx(raw: bytes, *, source: str = "<bytes>", expected_magic: int | None = None) -> np.ndarray:
    """Decode IDX bytes (already decompressed) into a numpy array; :class:`DataError` on any mismatch."""
    if len(raw) < 4:
        raise DataError(f"{source}: {len(raw)} bytes is too short for an IDX header; expected at least 4")
    magic = int.from_bytes(raw[:4], "big")
    want = f"0x{expected_magic:08x}" if expected_magic is not None else "0x000008xx-0x00000exx"
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"{source}: wrong magic number 0x{magic:08x}; expected {want} (an IDX file)")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{source}: wrong magic number 0x{magic:08x}; expected {want}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated header ({len(raw)} bytes); expected {header} bytes for {ndim} dims")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "trailing bytes"
        raise DataError(f"{source}: {what}: header says {'x'.join(map(str, dims))} "
                        f"({expected} payload bytes), file has {payload}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, *, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a numpy array (read-only view of the file's bytes)."""
    p = Path(path)
    return parse_idx(_read_bytes(p), source=str(p), expected_magic=expected_magic)


def find_idx_file(root: str | os.PathLike, stem: str, variant: str = "mnist") -> Path:
    """Locate ``stem`` (+ ``.gz``) under ``root``, ``root/<variant>`` or torchvision's ``root/<Name>/raw``."""
    root = Path(root)
    dirs = [root, root / variant]
    if variant in _TORCHVISION_DIRS:
        dirs.append(root / _TORCHVISION_DIRS[variant] / "raw")
    # Some mirrors spell "train-images.idx3-ubyte"
    alt = stem.replace("-idx", ".idx")
    for d in dirs:
        for name in (stem + ".gz", stem, alt + ".gz", alt):
            if (d / name).is_file():
                return d / name
    raise DataError(f"{root / (stem + '.gz')}: file not found; expected {stem}[.gz] in "
                    + ", ".join(str(d) for d in dirs))


def load_mnist(root: str | os.PathLike, train: bool = True, *, variant: str = "mnist",
               expected_count: int | None = None) -> ArrayDataset:
    """MNIST or Fashion-MNIST (``variant="fashion_mnist"``) from the standard IDX files under ``root``.

    Returns uint8 images N×1×28×28 and int64 labels. ``expected_count`` (60000 / 10000 for the official
    splits) is checked when given.
    """
    split = "train" if train else "test"
    img_path = find_idx_file(root, MNIST_FILES[(split, "images")], variant)
    lbl_path = find_idx_file(root, MNIST_FILES[(split, "labels")], variant)
    images = read_idx(img_path, expected_magic=IMAGES_MAGIC)
    labels = read_idx(lbl_path, expected_magic=LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{lbl_path}: {labels.shape[0]} labels but {img_path.name} has {images.shape[0]} "
                        f"images; expected equal counts")
    if expected_count is not None and images.shape[0] != expected_count:
        raise DataError(f"{img_path}: {images.shape[0]} samples; expected {expected_count} "
                        f"(official {variant} {split} split)")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} out of range; expected 0..9")
    return ArrayDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        name=f"{variant}/{split}",
    )
