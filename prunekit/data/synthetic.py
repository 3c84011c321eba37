"""A seeded synthetic image-classification dataset for quick tests.

Each class has a smooth random prototype (low-resolution noise upsampled); a sample is its class
prototype plus pixel noise, so a small model learns it in a few steps while it is not trivially
separable by one pixel. Train and test share prototypes and differ in noise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .arrays import ArrayDataset
from .rng import generator


def make_synthetic(num_samples: int = 1024, *, num_classes: int = 10, shape: tuple[int, int, int] = (3, 32, 32),
                   seed: int = 0, train: bool = True, noise: float = 48.0) -> ArrayDataset:
    """``num_samples`` uint8 images of ``shape`` (C, H, W), balanced labels in ``[0, num_classes)``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples={num_samples!r} not allowed; allowed: an integer >= 1")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} not allowed; allowed: an integer >= 2")
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"shape={shape!r} not allowed; allowed: (channels, height, width), each >= 1")
    c, h, w = (int(s) for s in shape)
    g = generator(seed, "synthetic", "prototypes", num_classes, c, h, w)
    low = torch.rand(num_classes, c, max(2, h // 4), max(2, w // 4), generator=g)
    protos = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) * 255.0
    g = generator(seed, "synthetic", "train" if train else "test", num_samples)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    x = protos[labels] + noise * torch.randn(num_samples, c, h, w, generator=g)
    images = x.round().clamp(0, 255).to(torch.uint8)
    return ArrayDataset(images, labels.to(torch.int64), num_classes, f"synthetic/{'train' if train else 'test'}")
