"""Batched augmentation and TensorLoader: equivalence with per-sample references, determinism, sampling."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.data import ArrayDataset, Augment, Normalization, TensorLoader, get_normalization
from prunekit.data.augment import (pad_crop_flip, pad_crop_flip_reference, random_resized_crop_boxes,
                                   resized_crop_batch)
from prunekit.errors import ConfigError


def _images(n=64, c=3, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def _indexed(n=103, c=3, h=8, w=8):
    """Labels = sample index, so batches reveal exactly which samples they hold."""
    return ArrayDataset(_images(n, c, h, w), torch.arange(n), n, "indexed")


# --- crop / flip ---------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(padding=st.integers(0, 5), mode=st.sampled_from(["zeros", "reflect"]), oh=st.integers(1, 16),
       ow=st.integers(1, 14), flip=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_pad_crop_flip_equals_per_sample_reference(padding, mode, oh, ow, flip, seed):
    images = _images(20, 3, 12, 10, seed % 7)
    h, w = 12, 10
    oh, ow = min(oh, h + 2 * padding), min(ow, w + 2 * padding)
    g = torch.Generator().manual_seed(seed)
    b = 9
    index = torch.randint(0, 20, (b,), generator=g)
    offsets = torch.stack([torch.randint(0, h + 2 * padding - oh + 1, (b,), generator=g),
                           torch.randint(0, w + 2 * padding - ow + 1, (b,), generator=g)], 1)
    flips = torch.rand(b, generator=g) < 0.5 if flip else None
    out = pad_crop_flip(images, index, offsets, flips, padding, mode, (oh, ow))
    ref = pad_crop_flip_reference(images, index, offsets, flips, padding, mode, (oh, ow))
    assert out.dtype == torch.uint8 and torch.equal(out, ref)


def test_crop_extreme_offsets_show_the_padding():
    images = torch.full((1, 1, 4, 4), 9, dtype=torch.uint8)
    images[0, 0, 0, 0] = 1
    idx = torch.tensor([0, 0])
    out = pad_crop_flip(images, idx, torch.tensor([[0, 0], [4, 4]]), None, 2, "zeros", (4, 4))
    assert out[0, 0, :2].sum() == 0 and out[0, 0, :, :2].sum() == 0 and out[0, 0, 2, 2] == 1
    assert out[1, 0, 2:].sum() == 0 and out[1, 0, :, 2:].sum() == 0
    refl = pad_crop_flip(images, idx[:1], torch.tensor([[0, 0]]), None, 2, "reflect", (4, 4))
    # reflect (edge not repeated): padded row -2 is row 2, so the corner (0, 0) reappears at (2, 2) only
    assert refl[0, 0, 2, 2] == 1 and (refl == 1).sum() == 1


def test_flip_at_centre_offset_is_a_mirror_and_no_flip_is_identity():
    images = _images(5)
    idx = torch.arange(5)
    centre = torch.full((5, 2), 4)
    same = pad_crop_flip(images, idx, centre, torch.zeros(5, dtype=torch.bool), 4, "zeros", (12, 10))
    mirrored = pad_crop_flip(images, idx, centre, torch.ones(5, dtype=torch.bool), 4, "reflect", (12, 10))
    assert torch.equal(same, images) and torch.equal(mirrored, images.flip(-1))


def test_random_parameters_cover_offsets_and_flip_half():
    aug = Augment(padding=4)
    p = aug.draw(torch.Generator().manual_seed(0), 20000, (32, 32))
    assert set(p["offsets"].flatten().tolist()) == set(range(9))
    assert abs(p["flips"].float().mean().item() - 0.5) < 0.02


# --- resized crop ----------------------------------------------------------------------------------------------

def test_resized_crop_equals_crop_then_interpolate():
    images = _images(6, 3, 16, 20)
    boxes = torch.tensor([[0, 0, 16, 20], [2, 3, 8, 9], [15, 19, 1, 1], [0, 5, 16, 4], [4, 0, 5, 20], [1, 1, 14, 18]])
    flips = torch.tensor([False, True, False, True, False, True])
    out = resized_crop_batch(images, torch.arange(6), boxes, flips, (24, 24))
    for b in range(6):
        t, l, h, w = boxes[b].tolist()
        ref = F.interpolate(images[b:b + 1, :, t:t + h, l:l + w].float(), size=(24, 24), mode="bilinear",
                            align_corners=False)[0]
        if flips[b]:
            ref = ref.flip(-1)
        assert torch.allclose(out[b], ref, atol=1e-3)


def test_resized_crop_boxes_follow_scale_and_ratio():
    g = torch.Generator().manual_seed(1)
    boxes = random_resized_crop_boxes(g, 5000, 64, 48, (0.3, 0.9), (0.75, 4 / 3))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    area = (h * w).double() / (64 * 48)
    assert area.min() > 0.27 and area.max() < 0.95
    assert (w.double() / h).min() > 0.7 and (w.double() / h).max() < 1.4


# --- normalization ---------------------------------------------------------------------------------------------

def test_loader_normalizes_with_the_paper_constants():
    data = ArrayDataset(_images(40, 3, 8, 8), torch.zeros(40, dtype=torch.int64), 10, "n")
    for convention in ("granet", "bip", "lap"):
        norm = get_normalization("cifar10", convention)
        loader = TensorLoader(data, 40, shuffle=False, normalization=norm)
        x, _ = next(iter(loader))
        mean = torch.tensor(norm.mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(norm.std, dtype=torch.float64).view(1, 3, 1, 1)
        assert torch.allclose(x.double(), (data.images.double() / 255 - mean) / std, atol=1e-5)
    x, _ = next(iter(TensorLoader(data, 40, shuffle=False)))  # no normalization: x / 255
    assert torch.allclose(x, data.images.float() / 255)


def test_augmented_batch_equals_reference_then_normalize():
    data = _indexed(50, 3, 8, 8)
    norm = Normalization((0.2, 0.4, 0.6), (0.3, 0.2, 0.1))
    aug = Augment(padding=3, padding_mode="reflect")
    loader = TensorLoader(data, 16, augment=aug, normalization=norm, seed=5)
    loader.set_epoch(2)
    order, params = loader.epoch_plan(2)
    x, y = next(iter(loader))
    assert torch.equal(y, order[:16])
    ref = pad_crop_flip_reference(data.images, order[:16], params["offsets"][:16], params["flips"][:16], 3, "reflect", (8, 8))
    scale, bias = norm.affine()
    assert torch.allclose(x, ref.float() * scale + bias, atol=1e-6)


# --- epochs, determinism, resume ---------------------------------------------------------------------------------

def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_each_epoch_is_a_permutation_with_partial_last_batch():
    data = _indexed(103)
    loader = TensorLoader(data, 10, augment=Augment(padding=2))
    assert len(loader) == 11
    batches = _epoch(loader, 0)
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(103))
    dropped = TensorLoader(data, 10, drop_last=True)
    assert len(dropped) == 10 and [len(y) for _, y in dropped] == [10] * 10
    with pytest.raises(ConfigError, match="drop_last=True leaves no batch"):
        TensorLoader(data, 200, drop_last=True)


def test_same_seed_same_batches_and_resume_at_epoch_boundary():
    data = _indexed(64)
    aug = Augment(padding=2)
    a = TensorLoader(data, 16, augment=aug, seed=7)
    run = [_epoch(a, e) for e in range(4)]
    resumed = TensorLoader(data, 16, augment=aug, seed=7)  # a fresh process resuming at epoch 3
    again = _epoch(resumed, 3)
    for (x1, y1), (x2, y2) in zip(run[3], again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # without set_epoch, successive iterations are epochs 0, 1, 2 ...
    auto = TensorLoader(data, 16, augment=aug, seed=7)
    for e in range(3):
        batches = list(auto)
        assert auto.epoch == e and all(torch.equal(x, rx) for (x, _), (rx, _) in zip(batches, run[e]))
    state = auto.state_dict()
    fresh = TensorLoader(data, 16, augment=aug, seed=7)
    fresh.load_state_dict(state)
    assert all(torch.equal(x, rx) for (x, _), (rx, _) in zip(fresh, run[3]))


def test_epochs_and_seeds_change_the_order_and_augmentation():
    data = _indexed(64)
    loader = TensorLoader(data, 64, augment=Augment(padding=2), seed=1)
    (x0, y0), = _epoch(loader, 0)
    (x1, y1), = _epoch(loader, 1)
    assert not torch.equal(y0, y1)
    (xs, ys), = _epoch(TensorLoader(data, 64, augment=Augment(padding=2), seed=2), 0)
    assert not torch.equal(y0, ys)
    # same order, different streams -> independent
    (xb, yb), = _epoch(TensorLoader(data, 64, augment=Augment(padding=2), seed=1, stream="bip_val"), 0)
    assert not torch.equal(y0, yb)
    # same sample, different epochs: augmentation differs for most samples
    p0 = loader.epoch_plan(0)[1]["offsets"]
    p1 = loader.epoch_plan(1)[1]["offsets"]
    assert (p0 != p1).any(dim=1).float().mean() > 0.5


def test_unshuffled_unaugmented_loader_is_the_dataset_in_order():
    data = _indexed(30)
    xs, ys = zip(*TensorLoader(data, 7, shuffle=False))
    assert torch.equal(torch.cat(ys), torch.arange(30))
    assert torch.allclose(torch.cat(xs), data.images.float() / 255, atol=1e-6)


# --- LAP random batches ---------------------------------------------------------------------------------------------

def test_random_batches_are_distinct_uniform_independent_and_resumable():
    data = _indexed(200, 1, 4, 4)
    loader = TensorLoader(data, 60, seed=3)
    steps = [y.clone() for _, y in loader.random_batches(600)]
    assert len(steps) == 600
    assert all(len(set(y.tolist())) == 60 for y in steps)
    counts = torch.bincount(torch.cat(steps), minlength=200).double()
    expected = 600 * 60 / 200
    assert ((counts - expected).abs() / expected).max() < 0.35  # every sample drawn ~180 times
    assert len({tuple(sorted(y.tolist())) for y in steps}) == 600
    tail = [y for _, y in loader.random_batches(100, start_step=450)]
    assert all(torch.equal(a, b) for a, b in zip(steps[450:550], tail))
    again = [y for _, y in TensorLoader(data, 60, seed=3).random_batches(10)]
    assert all(torch.equal(a, b) for a, b in zip(steps, again))
    big = [y for _, y in loader.random_batches(5, batch_size=190)]  # large-batch path
    assert all(len(set(y.tolist())) == 190 for y in big)
    with pytest.raises(ConfigError, match="batch_size=201 not allowed"):
        next(loader.random_batches(1, batch_size=201))


# --- argument validation ------------------------------------------------------------------------------------------

def test_augment_and_loader_arguments_are_validated():
    with pytest.raises(ConfigError, match="padding_mode='edge' not allowed; allowed: zeros, reflect"):
        Augment(padding_mode="edge")
    with pytest.raises(ConfigError, match="augment kind='cutout' not allowed"):
        Augment(kind="cutout")
    with pytest.raises(ConfigError, match="exceeds the padded image"):
        TensorLoader(_indexed(4), 2, augment=Augment(size=(20, 20), padding=1))
    with pytest.raises(ConfigError, match="batch_size=0 not allowed"):
        TensorLoader(_indexed(4), 0)
    with pytest.raises(ConfigError, match="epoch=-1 not allowed"):
        TensorLoader(_indexed(4), 2).set_epoch(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_iteration_never_synchronises_the_host():
    data = _indexed(300, 3, 32, 32)
    loader = TensorLoader(data, 64, augment=Augment(padding=4, padding_mode="reflect"), device="cuda",
                          normalization=get_normalization("cifar10"))
    cpu = TensorLoader(data, 64, augment=Augment(padding=4, padding_mode="reflect"),
                       normalization=get_normalization("cifar10"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        it = iter(loader)
        first = next(it)  # the epoch plan copy happens here (pinned, non-blocking)
        rest = list(it)
        rnd = list(loader.random_batches(3))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # the same batches as on the CPU
    for (xg, yg), (xc, yc) in zip([first] + rest, cpu):
        assert torch.equal(yg.cpu(), yc) and torch.allclose(xg.cpu(), xc, atol=1e-5)
    assert len(rnd) == 3
