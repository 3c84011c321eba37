"""Tiny-ImageNet and ImageFolder readers on small JPEG trees in the original layouts (needs Pillow)."""
from __future__ import annotations

import shutil

import pytest
import torch

import prunekit.data as D
from prunekit.data import testing as fx
from prunekit.data.image_ops import center_crop, resize_shorter
from prunekit.errors import ConfigError, DataError

PIL = pytest.importorskip("PIL", reason="Pillow is not installed: JPEG decoding (Tiny-ImageNet, ImageFolder) untestable")

WNIDS = ["n09999999", "n01443537", "n02124075"]  # deliberately unsorted, as wnids.txt is


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    fx.write_tiny_imagenet(root, WNIDS, train_per_class=6, val_per_class=2, grayscale_every=7)
    return root


def _colour(ds, i):
    return ds.images[i, :, 20:44, 20:44].double().mean(dim=(1, 2))


def test_tiny_imagenet_train_and_val_arrays(tiny):
    train = D.load_arrays("tiny_imagenet", tiny, check_counts=False, num_workers=0)
    val = D.load_arrays("tiny_imagenet", tiny, train=False, check_counts=False, num_workers=0)
    assert train.images.shape == (18, 3, 64, 64) and train.num_classes == 3
    assert val.images.shape == (6, 3, 64, 64)
    # labels follow the sorted wnids, as ImageFolder assigns them
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    order = sorted(WNIDS)
    assert val.labels.tolist() == [order.index(w) for w in WNIDS] * 2
    # a val image has the flat colour of its class's training images (JPEG: approximately)
    for i in range(6):
        ref = _colour(train, 6 * int(val.labels[i]) + 3)  # (1, 8, 12 are the grayscale ones)
        assert (_colour(val, i) - ref).abs().max() < 6
    # grayscale JPEGs come back as 3 equal channels
    gray = train.images[12]  # first image written, of WNIDS[0] = sorted label 2
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_tiny_imagenet_decoding_with_workers_is_identical(tiny):
    a = D.load_arrays("tiny_imagenet", tiny, check_counts=False, num_workers=0)
    b = D.load_arrays("tiny_imagenet", tiny, check_counts=False, num_workers=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_tiny_imagenet_official_counts_and_bad_annotations(tiny, tmp_path):
    with pytest.raises(DataError, match=r"wnids.txt: 3 class ids; expected 200"):
        D.load_arrays("tiny_imagenet", tiny, num_workers=0)
    copy = tmp_path / "t"
    shutil.copytree(tiny, copy)
    ann = copy / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace(WNIDS[1], "n00000000", 1))
    with pytest.raises(DataError, match=r"val_annotations.txt:2: expected .* wnid from wnids.txt"):
        D.load_arrays("tiny_imagenet", copy, train=False, check_counts=False)
    (copy / "tiny-imagenet-200" / "wnids.txt").unlink()
    with pytest.raises(DataError, match=r"wnids.txt: file not found"):
        D.load_arrays("tiny_imagenet", copy, check_counts=False)


def test_tiny_imagenet_reorganised_val_layout(tiny, tmp_path):
    """The reference scripts move val images into val/<wnid>/; that layout reads the same."""
    copy = tmp_path / "t"
    shutil.copytree(tiny, copy)
    base = copy / "tiny-imagenet-200" / "val"
    for line in (base / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        (base / wnid).mkdir(exist_ok=True)
        (base / "images" / name).rename(base / wnid / name)
    (base / "val_annotations.txt").unlink()
    val = D.load_arrays("tiny_imagenet", copy, train=False, check_counts=False, num_workers=0)
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("storage", ["tensor", "folder"])
def test_tiny_imagenet_loaders_both_storages(tiny, storage):
    loaders = D.build_loaders("tiny_imagenet", tiny, batch_size=8, test_batch_size=4, storage=storage,
                              check_counts=False, num_workers=0, seed=1)
    tr, te, spec = loaders
    assert spec.name == "tiny_imagenet" and len(tr) == 3 and len(te) == 2
    x, y = next(iter(tr))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    xt, yt = next(iter(te))
    assert xt.shape == (4, 3, 64, 64)
    norm = spec.normalization()
    assert norm.mean == (0.480, 0.448, 0.397)
    # deterministic given the seed and the epoch
    tr.set_epoch(4)
    first = [(a.clone(), b.clone()) for a, b in tr]
    tr.set_epoch(4)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, tr))


def test_tiny_imagenet_lap_resized_crop_preset(tiny):
    tr = D.build_loaders("tiny_imagenet", tiny, batch_size=6, check_counts=False, num_workers=0,
                         normalization="lap").train
    assert tr.augment.kind == "resized_crop" and tr.normalization.mean == (0.485, 0.456, 0.406)
    x, _ = next(iter(tr))
    assert x.shape == (6, 3, 64, 64) and torch.isfinite(x).all()


def _imagenet_tree(root, classes=("cat", "dog")):
    fx.write_image_folder(root / "train", list(classes), 5)
    fx.write_image_folder(root / "val", list(classes), 2, sizes=[(50, 70)])
    return root


def test_image_folder_loader_train_and_eval(tmp_path):
    root = _imagenet_tree(tmp_path)
    samples, classes = D.image_folder_samples(root / "train")
    assert classes == ["cat", "dog"] and len(samples) == 10 and [s[1] for s in samples] == [0] * 5 + [1] * 5
    loaders = D.build_loaders("imagenet", root, batch_size=4, test_batch_size=4, check_counts=False, num_workers=2,
                              augment=D.FolderTransform("train", size=32))
    tr, te, spec = loaders
    assert len(tr) == 3 and len(te) == 1 and spec.num_classes == 1000
    batches = list(tr)
    assert [x.shape for x, _ in batches] == [(4, 3, 32, 32)] * 2 + [(2, 3, 32, 32)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0] * 5 + [1] * 5
    x, y = next(iter(te))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1]
    # workers do not change the result: randomness is per (seed, epoch, sample)
    tr.set_epoch(2)
    a = [x for x, _ in tr]
    tr.num_workers = 0
    tr.set_epoch(2)
    assert all(torch.equal(p, q) for p, (q, _) in zip(a, tr))


def test_image_folder_errors(tmp_path):
    root = _imagenet_tree(tmp_path)
    with pytest.raises(DataError, match=r"train: 2 classes; expected 1000"):
        D.build_loaders("imagenet", root, num_workers=0)
    with pytest.raises(ConfigError, match="split='holdout' not allowed with folder storage"):
        D.build_loaders("imagenet", root, split="holdout", holdout=2, check_counts=False)
    (root / "val" / "dog").rename(root / "val" / "wolf")
    with pytest.raises(DataError, match="class folders differ"):
        D.build_loaders("imagenet", root, check_counts=False)
    (root / "val" / "wolf").rename(root / "val" / "dog")
    bad = root / "train" / "cat" / "cat_0.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    loaders = D.build_loaders("imagenet", root, batch_size=4, check_counts=False, num_workers=2,
                              augment=D.FolderTransform("train", size=16))
    with pytest.raises(DataError, match=r"cat_0\.JPEG: cannot decode image") as info:
        list(loaders.train)
    assert "\n" not in str(info.value)
    (root / "train" / "dog").mkdir(exist_ok=True)
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no image files"):
        D.image_folder_samples(root / "train")


def test_resize_and_center_crop_follow_torchvision_semantics():
    img = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 40, 60)
    r = resize_shorter(img, 20)
    assert r.shape == (3, 20, 30)
    tall = resize_shorter(img.transpose(1, 2), 20)
    assert tall.shape == (3, 30, 20)
    c = center_crop(img, (20, 30))
    assert torch.equal(c, img[:, 10:30, 15:45])
    padded = center_crop(img[:, :10, :10], (12, 12))
    assert padded.shape == (3, 12, 12) and padded[:, 0].sum() == 0
    flat = torch.full((3, 33, 47), 77, dtype=torch.uint8)
    assert (resize_shorter(flat, 16) == 77).all()
