"""Datasets, device-resident loaders, batched augmentation and verified downloads.

Entry points: :func:`build_loaders` (name -> train/test loaders + spec), :func:`load_arrays` (raw
uint8 tensors), :func:`download` (opt-in, checksummed). Readers for the original formats: IDX
(MNIST, Fashion-MNIST), CIFAR python pickles, Tiny-ImageNet and ImageFolder JPEG trees, plus
scikit-learn's digits and a synthetic dataset. torchvision is not used.
"""
from .arrays import ArrayDataset
from .augment import NO_AUGMENT, Augment, pad_crop_flip, resized_crop_batch
from .build import SPLITS, Loaders, build_loaders, load_arrays
from .cifar import load_cifar, read_cifar
from .download import download, download_file, verify
from .idx import load_mnist, read_idx
from .imagefolder import FolderLoader, FolderTransform, image_folder_samples
from .loader import TensorLoader
from .normalization import NORMALIZATIONS, Normalization, get_normalization
from .safe_pickle import safe_loads
from .sklearn_digits import load_digits
from .specs import DATASETS, DatasetSpec, FileSpec, get_spec, register_dataset
from .synthetic import make_synthetic
from .tiny_imagenet import load_tiny_imagenet, tiny_imagenet_samples

__all__ = [
    "ArrayDataset", "Augment", "NO_AUGMENT", "pad_crop_flip", "resized_crop_batch",
    "SPLITS", "Loaders", "build_loaders", "load_arrays",
    "load_cifar", "read_cifar", "download", "download_file", "verify", "load_mnist", "read_idx",
    "FolderLoader", "FolderTransform", "image_folder_samples", "TensorLoader",
    "NORMALIZATIONS", "Normalization", "get_normalization", "safe_loads", "load_digits",
    "DATASETS", "DatasetSpec", "FileSpec", "get_spec", "register_dataset", "make_synthetic",
    "load_tiny_imagenet", "tiny_imagenet_samples",
]
