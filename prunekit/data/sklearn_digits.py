"""scikit-learn's bundled 8×8 handwritten digits (UCI optdigits test set, 1797 images): the offline
default for demos and quick runs; no download, no files."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .arrays import ArrayDataset

TEST_SIZE = 360  # 1437 / 360, an 80/20 stratified split


def load_digits(train: bool = True, *, split_seed: int = 0, test_size: int = TEST_SIZE) -> ArrayDataset:
    """Digits as uint8 N×1×8×8 (pixel values 0..16 scaled to 0..255), seeded stratified train/test split.

    The split depends only on ``split_seed`` (not on a run's seed), so every run evaluates on the same
    360 test images.
    """
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError("the sklearn_digits dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = _load()
    images = np.round(bunch.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels,
                                           random_state=split_seed, shuffle=True)
    idx = np.sort(idx_train if train else idx_test)
    return ArrayDataset(torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy()), 10,
                        f"sklearn_digits/{'train' if train else 'test'}")
