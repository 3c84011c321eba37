"""Per-image decoding and geometric transforms on uint8 tensors (for folder datasets).

The ImageNet-style pipeline decodes JPEGs in worker processes, so these operate on one C×H×W image
of arbitrary size. Semantics follow torchvision's transforms on PIL images (``Resize``,
``CenterCrop``, ``RandomResizedCrop``, ``RandomHorizontalFlip``); resampling is bilinear with
antialiasing (``F.interpolate(antialias=True)`` is designed to match PIL).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .augment import random_resized_crop_boxes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError("decoding JPEG/PNG images needs Pillow: pip install pillow") from None
    return Image


def decode_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as uint8 RGB 3×H×W (grayscale / palette / CMYK converted, as ImageFolder does)."""
    Image = _pil()
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of a uint8 C×H×W image to ``size`` = (H, W)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_shorter(img: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the aspect ratio is kept."""
    h, w = img.shape[-2:]
    if h <= w:
        return resize(img, (size, int(size * w / h)))
    return resize(img, (int(size * h / w), size))


def center_crop(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision ``CenterCrop`` (zero-pads first when the image is smaller than ``size``)."""
    h, w = img.shape[-2:]
    th, tw = size
    if th > h or tw > w:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        img = F.pad(img, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
        h, w = img.shape[-2:]
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img[:, top:top + th, left:left + tw]


def random_resized_crop(img: torch.Tensor, gen: torch.Generator, size: tuple[int, int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision ``RandomResizedCrop``: a random box (area, aspect) resized to ``size``."""
    h, w = img.shape[-2:]
    top, left, bh, bw = random_resized_crop_boxes(gen, 1, h, w, scale, ratio)[0].tolist()
    return resize(img[:, top:top + bh, left:left + bw], size)
