"""The dataset registry: one :class:`DatasetSpec` per dataset.

A spec says what the data is (classes, channels, image size, official split sizes), how the papers
preprocess it (named normalization and augmentation presets, the first being the default), where it
comes from (file names, official URLs, checksums) and which reader loads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..registry import Registry
from .arrays import ArrayDataset
from .augment import NO_AUGMENT, Augment
from .checksums import file_digest
from .cifar import read_cifar
from .idx import load_mnist
from .imagefolder import FolderTransform
from .normalization import NORMALIZATIONS, Normalization, get_normalization
from .sklearn_digits import load_digits
from .synthetic import make_synthetic
from .tiny_imagenet import load_tiny_imagenet


@dataclass(frozen=True)
class FileSpec:
    """One distribution file: name, official URLs (mirrors in order), checksums, how to unpack it."""

    name: str
    urls: tuple[str, ...] = ()
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: str | None = None  # "zip": unpacked after download; tar.gz / gz are read as they are
    extract_top: str = ""

    def matches(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` has this file's checksums (False when none are known)."""
        if not (self.md5 or self.sha256):
            return False
        return ((not self.sha256 or file_digest(path, "sha256") == self.sha256)
                and (not self.md5 or file_digest(path, "md5") == self.md5))


# reader(root, splits=("train", "test"), **options) -> {split: ArrayDataset}
Reader = Callable[..., dict]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything prunekit knows about a dataset.

    ``storage``: ``"tensor"`` (held in device memory, :class:`TensorLoader`) or ``"folder"`` (decoded
    by workers, :class:`FolderLoader`); Tiny-ImageNet supports both. ``augmentations`` maps preset
    names (paper names, ``"standard"``, ``"none"``) to :class:`Augment` (tensor) or
    :class:`FolderTransform` (folder) objects; the first entry is the default.
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    train_size: int | None
    test_size: int | None
    storage: str
    augmentations: Mapping[str, Any]
    files: tuple[FileSpec, ...] = ()
    reader: Reader | None = None
    needs_root: bool = True
    folder_storage: bool = False  # tensor datasets that can also stream from files (Tiny-ImageNet)
    eval_transform: FolderTransform | None = None
    no_download_reason: str = ""
    description: str = ""
    reference: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def normalizations(self) -> dict[str, Normalization]:
        return NORMALIZATIONS.get(self.name, {})

    @property
    def default_normalization(self) -> str:
        return next(iter(self.normalizations), "none")

    @property
    def default_augment(self) -> str:
        return next(iter(self.augmentations))

    def normalization(self, convention: str | None = None) -> Normalization:
        return get_normalization(self.name, convention, self.channels)

    def augmentation(self, preset: str | None = None) -> Any:
        key = preset if preset is not None else self.default_augment
        if key not in self.augmentations:
            raise ConfigError(f"augment={preset!r} not allowed for dataset {self.name!r}; "
                              f"allowed: True, False, an Augment, or one of {', '.join(self.augmentations)}")
        return self.augmentations[key]


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec, storage=spec.storage, num_classes=spec.num_classes)
    return spec


def get_spec(name: str) -> DatasetSpec:
    """The spec of ``name``: a registered dataset, a ``"package.module:factory"`` import path or an entry
    point of group ``prunekit.datasets`` (see :func:`prunekit.data.user.user_spec`);
    :class:`UnknownNameError` (a ConfigError) with suggestions otherwise."""
    if name in DATASETS:
        return DATASETS.get(name)
    from .user import user_spec  # here, not at the top: prunekit.data.user imports this module

    spec = user_spec(name)
    return spec if spec is not None else DATASETS.get(name)


def resolve_root(spec: DatasetSpec, root: str | os.PathLike | None) -> Path | None:
    """``root/<name>`` when it exists (where :func:`download` puts files), else ``root``."""
    if root is None:
        if spec.needs_root:
            raise ConfigError(f"root=None not allowed for dataset {spec.name!r}; allowed: the folder holding its files")
        return None
    root = Path(root)
    return root / spec.name if (root / spec.name).is_dir() else root


# --- the datasets -------------------------------------------------------------------------------------

def _per_split(read_one: Callable[..., ArrayDataset]) -> Reader:
    def read(root, splits, **kw):
        return {s: read_one(root, s == "train", **kw) for s in splits}
    return read


def _read_mnist(variant: str) -> Reader:
    def read_one(root, train, *, check_counts=True, **_):
        return load_mnist(root, train, variant=variant, expected_count=(60000 if train else 10000) if check_counts else None)
    return _per_split(read_one)


def _read_cifar(variant: str) -> Reader:
    def read(root, splits, *, check_counts=True, **_):
        return read_cifar(root, variant, tuple(splits), check_counts=check_counts)  # one pass over the archive
    return read


def _read_tiny_one(root, train, *, check_counts=True, num_workers=4, **_):
    return load_tiny_imagenet(root, train, check_counts=check_counts, num_workers=num_workers)


def _read_digits_one(root, train, *, split_seed=0, **_):
    return load_digits(train, split_seed=split_seed)


def _read_synthetic_one(root, train, *, num_train=1024, num_test=256, num_classes=10, shape=(3, 32, 32),
                        data_seed=0, noise=48.0, **_):
    return make_synthetic(num_train if train else num_test, num_classes=num_classes, shape=tuple(shape),
                          seed=data_seed, train=train, noise=noise)


_read_tiny = _per_split(_read_tiny_one)
_read_digits = _per_split(_read_digits_one)
_read_synthetic = _per_split(_read_synthetic_one)


_MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _urls(bases: tuple[str, ...], name: str) -> tuple[str, ...]:
    return tuple(b + name for b in bases)


_PAD_CROP = Augment(kind="pad_crop", padding=4, padding_mode="zeros", flip=True)
_PAD_CROP_REFLECT = Augment(kind="pad_crop", padding=4, padding_mode="reflect", flip=True)

register_dataset(DatasetSpec(
    name="mnist", num_classes=10, channels=1, image_size=(28, 28), train_size=60000, test_size=10000,
    storage="tensor", augmentations={"none": NO_AUGMENT},
    files=(
        FileSpec("train-images-idx3-ubyte.gz", _urls(_MNIST_URLS, "train-images-idx3-ubyte.gz"),
                 md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
                 sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", size=9912422),
        FileSpec("train-labels-idx1-ubyte.gz", _urls(_MNIST_URLS, "train-labels-idx1-ubyte.gz"),
                 md5="d53e105ee54ea40749a09fcbcd1e9432",
                 sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", size=28881),
        FileSpec("t10k-images-idx3-ubyte.gz", _urls(_MNIST_URLS, "t10k-images-idx3-ubyte.gz"),
                 md5="9fb629c4189551a2d022fa330f9573f3",
                 sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", size=1648877),
        FileSpec("t10k-labels-idx1-ubyte.gz", _urls(_MNIST_URLS, "t10k-labels-idx1-ubyte.gz"),
                 md5="ec29112dd5afa0611ce80d1b7f02629c",
                 sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", size=4542),
        # uncompressed copies (checksums only)
        FileSpec("train-images-idx3-ubyte", md5="6bbc9ace898e44ae57da46a324031adb", size=47040016),
        FileSpec("train-labels-idx1-ubyte", md5="a25bea736e30d166cdddb491f175f624"),
        FileSpec("t10k-images-idx3-ubyte", md5="2646ac647ad5339dbf082846283269ea"),
        FileSpec("t10k-labels-idx1-ubyte", md5="27ae3e4e09519cfbb04c329615203637"),
    ),
    reader=_read_mnist("mnist"),
    description="MNIST handwritten digits, 28×28 grayscale, IDX files",
    reference="LeCun et al. 1998, http://yann.lecun.com/exdb/mnist/",
))

register_dataset(DatasetSpec(
    name="fashion_mnist", num_classes=10, channels=1, image_size=(28, 28), train_size=60000, test_size=10000,
    storage="tensor", augmentations={"none": NO_AUGMENT},
    files=(
        FileSpec("train-images-idx3-ubyte.gz", (_FASHION_URL + "train-images-idx3-ubyte.gz",),
                 md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        FileSpec("train-labels-idx1-ubyte.gz", (_FASHION_URL + "train-labels-idx1-ubyte.gz",),
                 md5="25c81989df183df01b3e8a0aad5dffbe"),
        FileSpec("t10k-images-idx3-ubyte.gz", (_FASHION_URL + "t10k-images-idx3-ubyte.gz",),
                 md5="bef4ecab320f06d8554ea6380940ec79"),
        FileSpec("t10k-labels-idx1-ubyte.gz", (_FASHION_URL + "t10k-labels-idx1-ubyte.gz",),
                 md5="bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    reader=_read_mnist("fashion_mnist"),
    description="Fashion-MNIST, 28×28 grayscale, IDX files (same layout as MNIST)",
    reference="Xiao et al. 2017, https://github.com/zalandoresearch/fashion-mnist",
))

register_dataset(DatasetSpec(
    name="cifar10", num_classes=10, channels=3, image_size=(32, 32), train_size=50000, test_size=10000,
    storage="tensor",
    augmentations={"standard": _PAD_CROP, "granet": _PAD_CROP_REFLECT, "dpai": _PAD_CROP, "bip": _PAD_CROP,
                   "lap": _PAD_CROP, "none": NO_AUGMENT},
    files=(
        FileSpec("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                 md5="c58f30108f718f92721af3b95e74349a", size=170498071),
        FileSpec("cifar-10-batches-py/data_batch_1", md5="c99cafc152244af753f735de768cd75f"),
        FileSpec("cifar-10-batches-py/data_batch_2", md5="d4bba439e000b95fd0a9bffe97cbabec"),
        FileSpec("cifar-10-batches-py/data_batch_3", md5="54ebc095f3ab1f0389bbae665268c751"),
        FileSpec("cifar-10-batches-py/data_batch_4", md5="634d18415352ddfa80567beed471001a"),
        FileSpec("cifar-10-batches-py/data_batch_5", md5="482c414d41f54cd18b22e5b47cb7c3cb"),
        FileSpec("cifar-10-batches-py/test_batch", md5="40351d587109b95175f43aff81a1287e"),
    ),
    reader=_read_cifar("cifar10"),
    description="CIFAR-10, 32×32 RGB, python pickles",
    reference="Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html",
))

register_dataset(DatasetSpec(
    name="cifar100", num_classes=100, channels=3, image_size=(32, 32), train_size=50000, test_size=10000,
    storage="tensor",
    augmentations={"standard": _PAD_CROP, "granet": _PAD_CROP, "dpai": _PAD_CROP, "bip": _PAD_CROP,
                   "none": NO_AUGMENT},
    files=(
        FileSpec("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                 md5="eb9058c3a382ffc7106e4002c42a8d85"),
        FileSpec("cifar-100-python/train", md5="16019d7e3df5f24257cddd939b257f8d"),
        FileSpec("cifar-100-python/test", md5="f0ef6b0ae62326f3e7ffdfab6717acfc"),
    ),
    reader=_read_cifar("cifar100"),
    description="CIFAR-100 (fine labels), 32×32 RGB, python pickles",
    reference="Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html",
))

register_dataset(DatasetSpec(
    name="tiny_imagenet", num_classes=200, channels=3, image_size=(64, 64), train_size=100000, test_size=10000,
    storage="tensor", folder_storage=True,
    augmentations={
        "standard": _PAD_CROP, "dpai": _PAD_CROP, "bip": _PAD_CROP,
        # LAP dataset.py: RandomResizedCrop(64) + flip
        "lap": Augment(kind="resized_crop", size=(64, 64), flip=True),
        "none": NO_AUGMENT,
    },
    files=(
        FileSpec("tiny-imagenet-200.zip", ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
                 md5="90528d7ca1a48142e341f4ef8d21d0de", size=248100043, extract="zip",
                 extract_top="tiny-imagenet-200"),
    ),
    reader=_read_tiny,
    description="Tiny-ImageNet-200, 64×64 RGB JPEG folders (val labels from val_annotations.txt)",
    reference="Le & Yang 2015, http://cs231n.stanford.edu/tiny-imagenet-200.zip",
))

register_dataset(DatasetSpec(
    name="imagenet", num_classes=1000, channels=3, image_size=(224, 224), train_size=1281167, test_size=50000,
    storage="folder",
    augmentations={
        "standard": FolderTransform("train", size=224, scale=(0.08, 1.0)),
        # DPaI utils.py uses RandomResizedCrop(224, scale=(0.2, 1)); its RandomGrayscale/ColorJitter are not reproduced
        "dpai": FolderTransform("train", size=224, scale=(0.2, 1.0)),
        "none": FolderTransform("eval", size=224, resize=256),
    },
    eval_transform=FolderTransform("eval", size=224, resize=256),
    no_download_reason="ImageNet requires registration at https://image-net.org; arrange train/ and val/ as "
                       "ImageFolder trees (root/{train,val}/<wnid>/<image>)",
    description="ILSVRC-2012 as ImageFolder trees root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG",
    reference="Russakovsky et al. 2015",
))

register_dataset(DatasetSpec(
    name="sklearn_digits", num_classes=10, channels=1, image_size=(8, 8), train_size=1437, test_size=360,
    storage="tensor", augmentations={"none": NO_AUGMENT}, reader=_read_digits, needs_root=False,
    no_download_reason="bundled with scikit-learn",
    description="scikit-learn's bundled 8×8 digits (1797 images), seeded stratified 1437/360 split",
    reference="Alpaydin & Kaynak 1998 (UCI optdigits), sklearn.datasets.load_digits",
    options={"split_seed": 0},
))

register_dataset(DatasetSpec(
    name="synthetic", num_classes=10, channels=3, image_size=(32, 32), train_size=1024, test_size=256,
    storage="tensor", augmentations={"none": NO_AUGMENT, "standard": _PAD_CROP}, reader=_read_synthetic,
    needs_root=False, no_download_reason="generated",
    description="seeded class-prototype + noise images for quick tests",
    options={"num_train": 1024, "num_test": 256, "num_classes": 10, "shape": (3, 32, 32), "data_seed": 0, "noise": 48.0},
))
