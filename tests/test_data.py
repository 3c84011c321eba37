"""prunekit.data: readers for the original formats, registry, splits, argument errors."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import prunekit.data as D
from prunekit.data import testing as fx
from prunekit.data.idx import IMAGES_MAGIC, load_mnist, read_idx
from prunekit.errors import ConfigError, DataError, UnknownNameError

from .conftest import require_mnist

TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    root = require_mnist()
    return root, load_mnist(root, True), load_mnist(root, False)


# --- real MNIST -----------------------------------------------------------------------------------------

def test_real_mnist_counts_histogram_and_mean(mnist):
    _, train, test = mnist
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert train.class_counts() == TRAIN_HIST
    assert test.class_counts() == TEST_HIST
    mean = train.images.double().mean().item() / 255
    assert abs(mean - 0.1307) <= 1e-4
    assert abs(test.images.double().mean().item() / 255 - 0.1325) <= 1e-4


def test_real_mnist_checksums_and_loaders(mnist):
    root, train, test = mnist
    assert len(D.verify("mnist", root)) == 4
    loaders = D.build_loaders("mnist", root.parent, batch_size=1000, test_batch_size=2500,
                              verify_checksums=True)
    tr, te, spec = loaders
    assert spec.name == "mnist" and loaders.val is None
    assert len(tr) == 60 and len(te) == 4
    x, y = next(iter(te))  # the test loader is ordered and un-augmented
    expected = (test.images[:2500].double() / 255 - 0.1307) / 0.3081
    assert x.dtype == torch.float32 and x.shape == (2500, 1, 28, 28)
    assert torch.allclose(x.double(), expected, atol=1e-5)
    assert torch.equal(y, test.labels[:2500])
    seen = torch.cat([y for _, y in tr])
    assert torch.bincount(seen, minlength=10).tolist() == TRAIN_HIST


def test_granet45k_split_takes_the_first_90_percent(mnist):
    root, train, _ = mnist
    loaders = D.build_loaders("mnist", root, batch_size=500, split="granet45k")
    assert len(loaders.train.data) == 54000 and len(loaders.val.data) == 6000
    assert torch.equal(loaders.train.data.images, train.images[:54000])
    assert torch.equal(loaders.val.data.labels, train.labels[54000:])


def test_granet45k_on_a_cifar10_sized_train_set_is_45000():
    opts = {"num_train": 50000, "num_test": 10, "shape": (1, 2, 2)}
    full = D.load_arrays("synthetic", options=opts)
    loaders = D.build_loaders("synthetic", batch_size=1000, split="granet45k", options=opts)
    assert len(loaders.train.data) == 45000 and len(loaders.val.data) == 5000
    assert torch.equal(loaders.train.data.images, full.images[:45000])


# --- IDX errors ------------------------------------------------------------------------------------------

def _small_mnist(tmp_path: Path, n_train=20, n_test=8, compress=True) -> Path:
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)}
    lbls = {"train": rng.integers(0, 10, n_train).astype(np.uint8), "test": rng.integers(0, 10, n_test).astype(np.uint8)}
    fx.write_mnist(tmp_path, imgs, lbls, compress=compress)
    return tmp_path


@pytest.mark.parametrize("compress", [True, False])
def test_idx_roundtrip_raw_and_gzip(tmp_path, compress):
    _small_mnist(tmp_path, compress=compress)
    ds = load_mnist(tmp_path, True)
    assert ds.images.shape == (20, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(read_idx(next(tmp_path.glob("train-images*"))).copy()))


def test_idx_wrong_magic(tmp_path):
    _small_mnist(tmp_path)
    labels = gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: wrong magic number 0x00000801; expected 0x00000803"):
        load_mnist(tmp_path, True)


def test_idx_not_idx_at_all(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(DataError, match="wrong magic number"):
        read_idx(p, expected_magic=IMAGES_MAGIC)


def test_idx_truncated_gzip(tmp_path):
    _small_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        load_mnist(tmp_path, True)


def test_idx_truncated_payload_and_trailing_bytes(tmp_path):
    _small_mnist(tmp_path, compress=False)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"truncated: header says 20x28x28 \(15680 payload bytes\), file has 15675"):
        load_mnist(tmp_path, True)
    p.write_bytes(raw + b"xx")
    with pytest.raises(DataError, match="trailing bytes"):
        load_mnist(tmp_path, True)


def test_idx_image_label_count_mismatch(tmp_path):
    _small_mnist(tmp_path)
    labels = fx.idx_bytes(np.zeros(19, np.uint8))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DataError, match="19 labels but train-images-idx3-ubyte.gz has 20 images"):
        load_mnist(tmp_path, True)


def test_idx_official_count_and_label_range(tmp_path):
    _small_mnist(tmp_path)
    with pytest.raises(DataError, match=r"20 samples; expected 60000"):
        D.load_arrays("mnist", tmp_path)
    assert len(D.load_arrays("mnist", tmp_path, check_counts=False)) == 20
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(fx.idx_bytes(np.full(8, 12, np.uint8))))
    with pytest.raises(DataError, match="label 12 out of range"):
        D.load_arrays("mnist", tmp_path, train=False, check_counts=False)


def test_idx_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: file not found"):
        load_mnist(tmp_path, False)


def test_checksum_mismatch(tmp_path):
    _small_mnist(tmp_path)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: sha256 checksum mismatch: expected 440fcabf"):
        D.verify("mnist", tmp_path)
    with pytest.raises(DataError, match="checksum mismatch"):
        D.build_loaders("mnist", tmp_path, check_counts=False, verify_checksums=True)
    with pytest.raises(DataError, match="no file of 'cifar10' with a known checksum"):
        D.verify("cifar10", tmp_path)


# --- CIFAR -----------------------------------------------------------------------------------------------

def _cifar_arrays(n_train, n_test, classes, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8), rng.integers(0, classes, n_train)),
            (rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), rng.integers(0, classes, n_test)))


@pytest.mark.parametrize("variant,classes", [("cifar10", 10), ("cifar100", 100)])
@pytest.mark.parametrize("archive", [True, False])
def test_cifar_reader_archive_and_folder(tmp_path, variant, classes, archive):
    train, test = _cifar_arrays(50, 10, classes)
    fx.write_cifar(tmp_path, variant, train, test, archive=archive)
    for root in (tmp_path, tmp_path / ("cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz")
                 if archive else tmp_path / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")):
        tr = D.load_cifar(root, True, variant=variant, check_counts=False)
        te = D.load_cifar(root, False, variant=variant, check_counts=False)
        assert tr.images.shape == (50, 3, 32, 32) and tr.num_classes == classes
        assert np.array_equal(tr.images.numpy(), train[0]) and np.array_equal(tr.labels.numpy(), train[1])
        assert np.array_equal(te.images.numpy(), test[0]) and np.array_equal(te.labels.numpy(), test[1])
    # the py2-style pickle is also what stock pickle reads (format check of the fixture writer)
    batch = pickle.loads(fx.cifar_batch_bytes(*train, variant=variant), encoding="bytes")
    assert isinstance(batch[b"data"], np.ndarray) and batch[b"data"].shape == (50, 3072)


def test_cifar_channel_layout_is_rgb_planes(tmp_path):
    img = np.zeros((5, 3, 32, 32), np.uint8)
    img[:, 0, 0, 1] = 200  # red, row 0, column 1 -> byte 1 of the row
    img[:, 2, 31, 31] = 7  # blue, last pixel -> byte 3071
    fx.write_cifar(tmp_path, "cifar10", (img, np.arange(5)), (img[:1], np.arange(1)), archive=False)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")[b"data"]
    assert raw[0, 1] == 200 and raw[0, 3071] == 7
    ds = D.load_cifar(tmp_path, check_counts=False)
    assert ds.images[0, 0, 0, 1] == 200 and ds.images[0, 2, 31, 31] == 7


def test_cifar_build_loaders_through_registry(tmp_path):
    train, test = _cifar_arrays(50, 20, 10)
    fx.write_cifar(tmp_path / "cifar10", "cifar10", train, test)  # root/<name>/ as download() places it
    with pytest.raises(DataError, match=r"data_batch_1: 10 samples; expected 10000"):
        D.build_loaders("cifar10", tmp_path)
    tr, te, spec = D.build_loaders("cifar10", tmp_path, 16, check_counts=False, normalization="bip")
    assert spec.num_classes == 10 and tr.augment.padding_mode == "zeros"
    assert tr.normalization.std == (0.2470, 0.2435, 0.2616)
    x, y = next(iter(tr))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
    granet = D.build_loaders("cifar10", tmp_path, 16, check_counts=False, normalization="granet")
    assert granet.train.augment.padding_mode == "reflect"  # GraNet's CIFAR-10 reflect padding
    assert granet.train.normalization.std == (0.2023, 0.1994, 0.2010)


def test_cifar_missing_and_truncated_archive(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        D.load_cifar(tmp_path)
    train, test = _cifar_arrays(50, 10, 10)
    path = fx.write_cifar(tmp_path, "cifar10", train, test)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: corrupt or truncated archive"):
        D.load_cifar(tmp_path, check_counts=False)


def test_cifar_archive_missing_member(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = 1
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="missing member.*data_batch_1"):
        D.load_cifar(tmp_path)


def test_cifar_bad_batch_contents(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    good = fx.cifar_batch_bytes(np.zeros((4, 3, 32, 32), np.uint8), [1, 2, 3, 4], variant="cifar100")
    (folder / "test").write_bytes(good)
    (folder / "train").write_bytes(fx.py2_pickle({"data": np.zeros((4, 3072), np.uint8), "fine_labels": [1, 2, 3]}))
    with pytest.raises(DataError, match=r"cifar-100-python/train: 3 labels for 4 images"):
        D.load_cifar(tmp_path, variant="cifar100", check_counts=False)
    (folder / "train").write_bytes(fx.py2_pickle({"data": np.zeros((4, 3000), np.uint8), "fine_labels": [1] * 4}))
    with pytest.raises(DataError, match=r"must be a uint8 array N×3072"):
        D.load_cifar(tmp_path, variant="cifar100", check_counts=False)
    (folder / "train").write_bytes(fx.py2_pickle({"data": np.zeros((1, 3072), np.uint8), "fine_labels": [100]}))
    with pytest.raises(DataError, match=r"labels span \[100, 100\]; expected 0..99"):
        D.load_cifar(tmp_path, variant="cifar100", check_counts=False)
    (folder / "train").write_bytes(fx.py2_pickle([1, 2]))
    with pytest.raises(DataError, match="expected a pickled dict batch"):
        D.load_cifar(tmp_path, variant="cifar100", check_counts=False)


class _Exploit:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Exploit2:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, protocol):
    for exploit in (_Exploit, _Exploit2):
        marker = tmp_path / f"pwned_{exploit.__name__}"
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir(exist_ok=True)
        payload = pickle.dumps({b"data": exploit(marker), b"labels": [0]}, protocol=protocol)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / name).write_bytes(payload)
        with pytest.raises(DataError, match=r"data_batch_1: not an allowed pickle.*is not allowed"):
            D.load_cifar(tmp_path)
        assert not marker.exists()


def test_safe_pickle_refuses_object_arrays_and_other_globals():
    with pytest.raises(DataError, match="not allowed"):
        D.safe_loads(pickle.dumps(np.array([{"a": 1}], dtype=object), protocol=2))
    with pytest.raises(DataError, match="collections.OrderedDict is not allowed"):
        D.safe_loads(pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=2))
    # plain numeric arrays and containers (any protocol) are fine
    for protocol in range(0, 6):
        out = D.safe_loads(pickle.dumps({"a": [1, 2.5, None, b"x", "s"], "b": np.arange(6, dtype=np.int64).reshape(2, 3)},
                                        protocol=protocol))
        assert out["a"] == [1, 2.5, None, b"x", "s"] and out["b"].tolist() == [[0, 1, 2], [3, 4, 5]]


# --- digits, synthetic -----------------------------------------------------------------------------------

def test_sklearn_digits_split():
    tr = D.load_arrays("sklearn_digits")
    te = D.load_arrays("sklearn_digits", train=False)
    assert (len(tr), len(te)) == (1437, 360)
    assert tr.images.shape[1:] == (1, 8, 8) and tr.images.dtype == torch.uint8 and int(tr.images.max()) == 255
    assert sum(tr.class_counts()) + sum(te.class_counts()) == 1797
    # stratified: each class keeps ~20% of its images in test
    for a, b in zip(tr.class_counts(), te.class_counts()):
        assert abs(b / (a + b) - 0.2) < 0.02
    assert torch.equal(D.load_arrays("sklearn_digits", train=False).images, te.images)
    other = D.load_arrays("sklearn_digits", train=False, options={"split_seed": 1})
    assert not torch.equal(other.images, te.images)


def test_synthetic_is_seeded_and_learnable():
    opts = {"num_train": 400, "num_test": 200, "shape": (3, 8, 8), "num_classes": 5}
    tr = D.load_arrays("synthetic", options=opts)
    te = D.load_arrays("synthetic", train=False, options=opts)
    assert tr.images.shape == (400, 3, 8, 8) and tr.num_classes == 5 and tr.class_counts() == [80] * 5
    assert torch.equal(tr.images, D.load_arrays("synthetic", options=opts).images)
    assert not torch.equal(tr.images, D.load_arrays("synthetic", options={**opts, "data_seed": 1}).images)
    # nearest class mean separates the classes well above chance (20%)
    xt, xe = tr.images.flatten(1).float(), te.images.flatten(1).float()
    means = torch.stack([xt[tr.labels == c].mean(0) for c in range(5)])
    acc = (torch.cdist(xe, means).argmin(1) == te.labels).float().mean().item()
    assert acc > 0.9


# --- registry, splits, argument errors -------------------------------------------------------------------

def test_registry_specs_are_complete():
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet", "sklearn_digits",
            "synthetic"} <= set(D.DATASETS.names())
    for name in D.DATASETS.names():
        spec = D.get_spec(name)
        assert spec.num_classes >= 2 and spec.channels in (1, 3) and len(spec.image_size) == 2
        norm = spec.normalization()
        assert len(norm.mean) == spec.channels == len(norm.std)
        assert spec.augmentation() is spec.augmentations[spec.default_augment]
        for f in spec.files:
            assert f.md5 is None or len(f.md5) == 32
            assert f.sha256 is None or len(f.sha256) == 64
            assert all(u.startswith(("http://", "https://")) for u in f.urls)
        assert D.DATASETS.meta(name)["storage"] == spec.storage
    assert D.get_spec("cifar10").normalization("lap").std == (0.247, 0.243, 0.261)
    assert D.get_spec("tiny_imagenet").normalization().mean == (0.480, 0.448, 0.397)
    with pytest.raises(UnknownNameError, match="did you mean 'cifar10'"):
        D.get_spec("cifar_10")


def test_bip_stream_is_an_independent_loader_over_the_train_set():
    loaders = D.build_loaders("sklearn_digits", batch_size=100, split="bip", seed=3)
    assert loaders.val.data.images is loaders.train.data.images  # shared, not copied
    a = torch.cat([y for _, y in loaders.train])
    b = torch.cat([y for _, y in loaders.val])
    assert sorted(a.tolist()) == sorted(b.tolist()) == sorted(loaders.train.data.labels.tolist())
    assert not torch.equal(a, b)


def test_holdout_split():
    loaders = D.build_loaders("sklearn_digits", batch_size=64, test_batch_size=50, split="holdout", holdout=237)
    full = D.load_arrays("sklearn_digits")
    assert len(loaders.train.data) == 1200 and len(loaders.val.data) == 237
    assert torch.equal(loaders.val.data.images, full.images[1200:])
    assert not loaders.val.shuffle and loaders.val.augment is None and len(loaders.val) == 5


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=0), "batch_size=0 not allowed; allowed: an integer >= 1"),
    (dict(test_batch_size=-1), "test_batch_size=-1 not allowed"),
    (dict(seed=-1), "seed=-1 not allowed"),
    (dict(split="valid"), "split='valid' not allowed; allowed: official, granet45k, bip, holdout"),
    (dict(split="holdout"), "holdout=None not allowed"),
    (dict(holdout=5), "holdout=5 not allowed with split='official'"),
    (dict(normalization="granet"), "normalization='granet' not allowed for dataset 'sklearn_digits'; allowed: standard, none"),
    (dict(augment="granet"), "augment='granet' not allowed for dataset 'sklearn_digits'"),
    (dict(augment=3), "augment=3 not allowed"),
    (dict(drop_last="yes"), "drop_last='yes' not allowed; allowed: True or False"),
    (dict(storage="folder"), "storage='folder' not allowed for dataset 'sklearn_digits'; allowed: tensor"),
    (dict(device="gpu0"), "device='gpu0' not allowed"),
    (dict(options={"nope": 1}), "options={'nope': ...} not allowed"),
    (dict(normalization=D.Normalization((0.5,) * 3, (0.2,) * 3)), "normalization with 3 channels not allowed"),
])
def test_build_loaders_argument_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        D.build_loaders("sklearn_digits", **{"batch_size": 8, **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_custom_normalization_and_synthetic_options():
    norm = D.Normalization((0.5,), (0.25,))
    loaders = D.build_loaders("synthetic", batch_size=8, normalization=norm, augment="standard",
                              options={"shape": (1, 12, 12), "num_train": 16, "num_test": 8, "num_classes": 3})
    assert loaders.train.normalization is norm and loaders.spec.image_size == (12, 12)
    x, y = next(iter(loaders.test))
    assert torch.allclose(x, (loaders.test.data.images[:8].float() / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(ConfigError, match="shape=5 not allowed"):
        D.build_loaders("synthetic", options={"shape": 5})


def test_root_required_and_folder_only_datasets(tmp_path):
    with pytest.raises(ConfigError, match="root=None not allowed for dataset 'cifar10'"):
        D.build_loaders("cifar10")
    with pytest.raises(ConfigError, match="cannot be loaded as arrays"):
        D.load_arrays("imagenet", tmp_path)
    with pytest.raises(ConfigError, match="imagenet' cannot be downloaded"):
        D.download("imagenet", tmp_path)


def test_array_dataset_validates():
    with pytest.raises(DataError, match="images must be a uint8"):
        D.ArrayDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), 2, "x")
    with pytest.raises(DataError, match="2 images but 3 labels"):
        D.ArrayDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), 2, "x")
    with pytest.raises(DataError, match=r"labels span \[0, 5\]"):
        D.ArrayDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 5]), 2, "x")


def test_pickle_length_bomb_and_billion_laughs_are_cheap():
    # BYTEARRAY8 declaring 2**62 bytes in a 20-byte file: refused before any allocation
    bomb = b"\x80\x05\x96" + (1 << 62).to_bytes(8, "little") + b"abc."
    with pytest.raises(DataError, match="not an allowed pickle"):
        D.safe_loads(bomb)
    # 59 levels of [x, x] built from memo references: 2**59 leaves if expanded, linear here
    laughs = bytearray(b"\x80\x02K\x01q\x00")
    for i in range(1, 60):
        laughs += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])
    out = D.safe_loads(bytes(laughs + b"."))
    assert out[0] is out[1]


def test_sklearn_digits_cache_gives_the_same_split_and_survives_corruption(tmp_path, monkeypatch):
    from prunekit.data import sklearn_digits as sd

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = sd.load_digits(train=False)  # builds the cache from scikit-learn
    cache = sd._cache_file(0, sd.TEST_SIZE)
    assert cache.exists()
    again = sd.load_digits(train=False)  # read back from the cache
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    cache.write_bytes(b"PK\x03\x04 not a zip")
    rebuilt = sd.load_digits(train=False)
    assert torch.equal(first.labels, rebuilt.labels)
    assert len(sd.load_digits(train=True)) + len(rebuilt) == 1797
