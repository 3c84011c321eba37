"""Per-channel normalization constants, one table for every dataset and paper.

Each paper's reference code normalizes with its own constants; they differ in the third decimal and
that is enough to change a reproduced number, so they are kept verbatim with their provenance
(see ``../shared/reference/methods.md``). ``"none"`` means x/255 only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Normalization:
    """``(x/255 - mean) / std`` per channel; ``source`` says where the numbers come from."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    def affine(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, bias), each 1×C×1×1 float32, with ``normalized = uint8 * scale + bias``."""
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).float().view(1, -1, 1, 1).to(device)
        bias = (-mean / std).float().view(1, -1, 1, 1).to(device)
        return scale, bias


_IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "ImageNet statistics (torchvision)")
_CIFAR100_LONG = Normalization((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                               (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
                               "GraNet sparselearning/utils.py & DPaI utils.py get_cifar100_dataloaders")
_CIFAR10_GRANET = Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                                "GraNet sparselearning/utils.py & DPaI utils.py get_cifar10_dataloaders")
_MNIST = Normalization((0.1307,), (0.3081,), "MNIST training statistics (GraNet, DPaI, LAP)")
_NONE1 = Normalization((0.0,), (1.0,), "none: x/255")
_NONE3 = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "none: x/255")

# dataset -> convention -> constants. The first entry of each dataset is its default.
NORMALIZATIONS: dict[str, dict[str, Normalization]] = {
    "cifar10": {
        "granet": _CIFAR10_GRANET,
        "dpai": _CIFAR10_GRANET,
        "bip": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "BiP datasets/cifar.py CIFAR10"),
        "lap": Normalization((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261), "LAP dataset.py cifar10"),
        "none": _NONE3,
    },
    "cifar100": {
        "granet": _CIFAR100_LONG,
        "dpai": _CIFAR100_LONG,
        "bip": Normalization((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), "BiP datasets/cifar.py CIFAR100"),
        "none": _NONE3,
    },
    "mnist": {"standard": _MNIST, "granet": _MNIST, "dpai": _MNIST, "lap": _MNIST, "none": _NONE1},
    "fashion_mnist": {
        # LAP dataset.py applies no normalization to FMNIST (ToTensor only)
        "lap": Normalization((0.0,), (1.0,), "LAP dataset.py fmnist: ToTensor only"),
        "standard": Normalization((0.2860,), (0.3530,), "Fashion-MNIST training statistics"),
        "none": _NONE1,
    },
    "tiny_imagenet": {
        "dpai": Normalization((0.480, 0.448, 0.397), (0.276, 0.269, 0.282), "DPaI utils.py get_tinyimagenet_dataloaders"),
        "bip": _IMAGENET,
        "lap": _IMAGENET,
        "imagenet": _IMAGENET,
        "none": _NONE3,
    },
    "imagenet": {"imagenet": _IMAGENET, "granet": _IMAGENET, "dpai": _IMAGENET, "bip": _IMAGENET, "none": _NONE3},
    "sklearn_digits": {
        # pixel statistics of all 1797 digits after scaling 0..16 -> 0..255
        "standard": Normalization((0.3053,), (0.3759,), "sklearn digits pixel statistics"),
        "none": _NONE1,
    },
    "synthetic": {"standard": Normalization((0.5,), (0.25,), "synthetic: nominal"), "none": _NONE1},
}


def get_normalization(dataset: str, convention: str | None = None, channels: int | None = None) -> Normalization:
    """Constants for ``dataset`` under ``convention`` (a paper name, ``"standard"`` or ``"none"``).

    ``None`` gives the dataset's default (first entry). Unknown datasets accept only ``"none"``.
    ``channels`` broadcasts single-channel constants (synthetic RGB data).
    """
    table = NORMALIZATIONS.get(dataset, {"none": _NONE1})
    key = convention if convention is not None else next(iter(table))
    if key not in table:
        raise ConfigError(f"normalization={convention!r} not allowed for dataset {dataset!r}; "
                          f"allowed: {', '.join(table)}")
    norm = table[key]
    if channels is not None and len(norm.mean) != channels:
        if len(norm.mean) == 1:
            norm = Normalization(norm.mean * channels, norm.std * channels, norm.source)
        else:
            raise ConfigError(f"normalization={key!r} of {dataset!r} has {len(norm.mean)} channels, data has {channels}")
    return norm
