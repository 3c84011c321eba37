"""Exact top-k (layer-wise and global, with ties), N:M and unit masks."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import MaskError
from prunekit.sparsity import nm_mask, num_keep, select, topk_mask

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


def _scores(shape, seed, levels):
    g = torch.Generator().manual_seed(seed)
    # few distinct levels -> many ties
    return torch.randint(0, levels, shape, generator=g).float()


@settings(max_examples=150, deadline=None)
@given(shapes, st.floats(0.0, 0.999), st.integers(0, 10_000), st.sampled_from([2, 3, 1000]))
def test_topk_keeps_exact_count_with_ties(shape, sparsity, seed, levels):
    s = _scores(shape, seed, levels)
    k = num_keep(s.numel(), sparsity)
    m = topk_mask(s, k)
    assert m.dtype == torch.bool and m.shape == s.shape
    assert int(m.sum()) == k
    if 0 < k < s.numel():  # every kept score >= every pruned score
        assert s[m].min() >= s[~m].max()


@settings(max_examples=60, deadline=None)
@given(st.lists(shapes, min_size=1, max_size=4), st.floats(0.0, 0.999), st.integers(0, 10_000))
def test_global_topk_exact_total(shape_list, sparsity, seed):
    scores = {f"l{i}": _scores(sh, seed + i, 4) for i, sh in enumerate(shape_list)}
    total = sum(s.numel() for s in scores.values())
    masks = select(scores, sparsity=sparsity, allocation="global")
    assert sum(int(m.sum()) for m in masks.values()) == num_keep(total, sparsity)
    kept = torch.cat([scores[n][masks[n]] for n in scores])
    pruned = torch.cat([scores[n][~masks[n]] for n in scores])
    if kept.numel() and pruned.numel():
        assert kept.min() >= pruned.max()


def test_topk_tie_break_keeps_lower_index():
    s = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5])
    assert topk_mask(s, 2).tolist() == [False, True, True, False, False]
    assert topk_mask(torch.zeros(5), 3).tolist() == [True, True, True, False, False]


def test_topk_tensor_k_matches_int_k():
    s = _scores((7, 5), 3, 4)
    for k in (0, 1, 17, 35):
        assert torch.equal(topk_mask(s, torch.tensor(k)), topk_mask(s, k))


def test_topk_nan_and_inf_are_smallest():
    s = torch.tensor([float("nan"), 1.0, -float("inf"), 3.0])
    assert topk_mask(s, 2).tolist() == [False, True, False, True]


def test_layerwise_reference_rounding():
    # int(0.9 * 10) = 9 zeros -> 1 kept; int(0.55 * 11) = 6 zeros -> 5 kept
    masks = select({"a": torch.arange(10.0), "b": torch.arange(11.0)}, sparsity=0.0, allocation={"a": 0.9, "b": 0.55})
    assert int(masks["a"].sum()) == 1 and masks["a"][9]
    assert int(masks["b"].sum()) == 5


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 4)]), st.integers(0, 999))
def test_nm_exact_per_group(out, groups, nm, seed):
    n, m = nm
    w = _scores((out, groups * m), seed, 3)
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape
    assert (mask.view(out, groups, m).sum(-1) == n).all()


def test_nm_conv_groups_along_input_channels():
    w = torch.randn(3, 8, 3, 3)
    mask = nm_mask(w, 2, 4)
    # every (out, kh, kw) position has exactly 2 of each group of 4 input channels
    assert (mask.permute(0, 2, 3, 1).reshape(3, 3, 3, 2, 4).sum(-1) == 2).all()
    with pytest.raises(MaskError, match="conv.weight.*multiple of M=4"):
        nm_mask(torch.randn(3, 6, 3, 3), 2, 4, name="conv.weight")


def test_filter_and_channel_masks_zero_whole_units():
    w = torch.randn(8, 4, 3, 3)
    w[2] *= 10  # filter 2 dominates
    fm = select({"w": w}, sparsity=0.75, allocation="uniform", structure="filter")["w"]  # 8 - int(6) = 2 filters
    per_filter = fm.flatten(1)
    assert ((per_filter.all(1)) | (~per_filter.any(1))).all()  # all-or-nothing per filter
    assert int(per_filter.all(1).sum()) == 2 and per_filter[2].all()
    cm = select({"w": w}, sparsity=0.5, allocation="uniform", structure="channel")["w"]
    per_channel = cm.transpose(0, 1).flatten(1)
    assert ((per_channel.all(1)) | (~per_channel.any(1))).all()
    assert int(per_channel.all(1).sum()) == 2
