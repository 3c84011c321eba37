"""scikit-learn's bundled 8×8 handwritten digits (UCI optdigits test set, 1797 images): the offline
default for demos and quick runs; no download, no files."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..utils.io import atomic_path
from .arrays import ArrayDataset

TEST_SIZE = 360  # 1437 / 360, an 80/20 stratified split


def _cache_file(split_seed: int, test_size: int) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunekit"
    return root / f"sklearn_digits-split{split_seed}-test{test_size}.npz"


def _arrays(split_seed: int, test_size: int) -> dict[str, np.ndarray]:
    """Images, labels and the split's train indices; cached as .npz, because importing scikit-learn
    costs a second or more per process (every sweep worker, every test subprocess)."""
    cache = _cache_file(split_seed, test_size)
    try:
        with np.load(cache, allow_pickle=False) as f:
            return {k: f[k] for k in ("images", "labels", "train")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # absent or unreadable: rebuild it
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError("the sklearn_digits dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = _load()
    images = np.round(bunch.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    idx_train, _ = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels,
                                    random_state=split_seed, shuffle=True)
    arrays = {"images": images, "labels": labels, "train": np.sort(idx_train)}
    try:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError:
        pass  # a read-only home only costs the import next time
    return arrays


def load_digits(train: bool = True, *, split_seed: int = 0, test_size: int = TEST_SIZE) -> ArrayDataset:
    """Digits as uint8 N×1×8×8 (pixel values 0..16 scaled to 0..255), seeded stratified train/test split.

    The split depends only on ``split_seed`` (not on a run's seed), so every run evaluates on the same
    360 test images.
    """
    a = _arrays(split_seed, test_size)
    in_train = np.zeros(len(a["labels"]), dtype=bool)
    in_train[a["train"]] = True
    idx = np.flatnonzero(in_train if train else ~in_train)
    return ArrayDataset(torch.from_numpy(a["images"][idx].copy()), torch.from_numpy(a["labels"][idx].copy()), 10,
                        f"sklearn_digits/{'train' if train else 'test'}")
