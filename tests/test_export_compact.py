"""Compact export: the physically smaller model equals the channel-masked model.

The reference masked model is built here without the dependency graph: masks applied, and for every
conv/linear with fully masked output rows the bias and the BatchNorm registered right after it zeroed
(the definition in prunekit/export/compact.py).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import MaskError
from prunekit.export import compact_model
from prunekit.models import create
from prunekit.models.resnet_cifar import PadShortcut
from prunekit.sparsity.targets import resolve_targets
from prunekit.structure import ChannelGather

pytest.importorskip("torch_pruning")

MODELS = ["cifar_resnet20", "resnet20s", "vgg16_bn", "cifar_resnet18"]


@torch.no_grad()
def randomize_norms_(model):
    """Non-trivial BatchNorm statistics and affine terms (so zeroing a channel matters), seeded."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def randomized(name):
    """A model whose BN layers have non-trivial statistics and affine terms (so zeroing matters)."""
    torch.manual_seed(0)
    model = create(name).eval()
    randomize_norms_(model)
    return model


@torch.no_grad()
def masked_reference(model, masks):
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    for name, m in masks.items():
        params[name].mul_(m)
    modules = list(ref.named_modules())
    for i, (name, mod) in enumerate(modules):
        mask = masks.get(f"{name}.weight")
        if mask is None:
            continue
        dead = ~mask.reshape(mask.shape[0], -1).any(1)
        if getattr(mod, "bias", None) is not None:
            mod.bias[dead] = 0
        nxt = modules[i + 1][1] if i + 1 < len(modules) else None
        if isinstance(nxt, nn.BatchNorm2d):
            nxt.weight[dead] = 0
            nxt.bias[dead] = 0
    return ref


def random_unit_masks(model, dim, seed=1, targets="bip_structured"):
    """BiP-style masks: half of the output filters (dim 0) or input channels (dim 1) of every conv,
    chosen independently per layer (not group-aware)."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in resolve_targets(targets).select(model).items():
        keep = torch.rand(p.shape[dim], generator=g) > 0.5
        keep[0] = True
        shape = [1] * p.dim()
        shape[dim] = -1
        masks[name] = keep.view(shape).expand_as(p).clone()
    return masks


def max_diff(a, b, x):
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("name", MODELS)
def test_structured_masks_compact_equals_masked(name):
    model = randomized(name)
    pruner = pk.create("structured", model, sparsity=0.5, round_to=8, input_shape=(3, 32, 32))
    pruner.prune()
    x = torch.randn(2, 3, 32, 32)
    result = compact_model(model, pruner.masks, x)
    masks = dict(pruner.masks.items())
    assert max_diff(result.model, masked_reference(model, masks), x) <= 1e-5
    # every masked weight is physically gone: kept weights == weights of the compact model
    compact_weights = sum(p.numel() for n, p in result.model.named_parameters() if n in masks)
    assert compact_weights == pruner.masks.nnz()
    assert sum(result.coupled.values()) == 0
    assert result.params_after < 0.3 * result.params_before


def test_resnet20_widths_halved_and_model_untouched():
    model = randomized("cifar_resnet20")
    before = copy.deepcopy(model.state_dict())
    pruner = pk.create("structured", model, sparsity=0.5, round_to=8, input_shape=(3, 32, 32))
    pruner.prune()
    state = copy.deepcopy(model.state_dict())
    result = compact_model(model, pruner.masks, torch.randn(2, 3, 32, 32))
    c = result.model
    assert c.conv1.out_channels == 8 and c.layer1[0].conv1.out_channels == 8
    assert c.layer2[0].conv1.out_channels == 16 and c.layer2[0].shortcut[0].out_channels == 16
    assert c.layer3[2].conv2.out_channels == 32 and c.fc.in_features == 32 and c.fc.out_features == 10
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # model itself unchanged
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # (pruning did mask)


@pytest.mark.parametrize("name", ["resnet20s", "cifar_resnet20", "vgg16_bn"])
@pytest.mark.parametrize("dim", [0, 1])
def test_layerwise_filter_and_channel_masks(name, dim):
    """Per-layer filter (dim 0) or input-channel (dim 1) masks, as BiP/HYDRA's structured modes make:
    what is removable is removed, what is coupled to live channels stays (as zeros); outputs equal."""
    model = randomized(name)
    masks = random_unit_masks(model, dim)
    x = torch.randn(2, 3, 32, 32)
    result = compact_model(model, masks, x)
    assert max_diff(result.model, masked_reference(model, masks), x) <= 1e-5
    assert result.params_after < result.params_before
    if dim == 0 and name != "vgg16_bn":  # residual streams: blocks' masked filters are coupled
        assert sum(result.coupled.values()) > 0


def test_not_channel_aligned_names_the_layer():
    model = randomized("resnet20s")
    masks = random_unit_masks(model, 0)
    bad = masks["layer2.1.conv1.weight"].clone()
    bad[0, 0, 0, 0] = ~bad[0, 0, 0, 0]
    masks["layer2.1.conv1.weight"] = bad
    with pytest.raises(MaskError, match=r"layer2\.1\.conv1\.weight: mask does not remove whole channels"):
        compact_model(model, masks, torch.randn(2, 3, 32, 32))


def test_nm_masks_are_rejected_for_compact_export():
    model = randomized("vgg16_bn")
    name = "features.3.weight"
    w = dict(model.named_parameters())[name]
    with pytest.raises(MaskError, match="features.3.weight"):
        compact_model(model, {name: pk.sparsity.nm_mask(w.abs(), 2, 4)}, torch.randn(1, 3, 32, 32))


def test_channel_gather_is_option_a_and_prunes_both_sides():
    x = torch.randn(2, 4, 6, 6)
    pad = PadShortcut(4, 8)
    gather = ChannelGather.from_pad(4, pad.pad, pad.extra)
    assert torch.equal(gather(x), pad(x))
    assert gather.gather.tolist() == [4, 4, 0, 1, 2, 3, 4, 4]
    tp_pruner = pytest.importorskip("prunekit.structure.graph")._gather_pruner_class()
    tp_pruner.prune_in_channels(gather, [1, 3])  # inputs 1 and 3 removed: their outputs become zeros
    assert gather.in_channels == 2 and gather.gather.tolist() == [2, 2, 0, 2, 1, 2, 2, 2]
    tp_pruner.prune_out_channels(gather, [0, 3, 7])
    assert gather.gather.tolist() == [2, 0, 1, 2, 2]
    out = gather(x[:, [0, 2]])
    expected = F.pad(x[:, [0, 2], ::2, ::2], (0, 0, 0, 0, 0, 1))[:, [2, 0, 1, 2, 2]]
    assert torch.equal(out, expected)


def test_history_and_summary():
    model = randomized("cifar_resnet20")
    pruner = pk.create("structured", model, sparsity=0.25, input_shape=(3, 32, 32))
    pruner.prune()
    result = compact_model(model, pruner.masks, torch.randn(2, 3, 32, 32))
    assert result.removed["layer1.0.conv1"] == 4 and result.removed["conv1"] == 4
    assert all(isinstance(h[0], str) and isinstance(h[2], list) for h in result.history)
    assert "parameters" in result.summary() and result.max_abs_diff <= 1e-5


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet20s"])
def test_folded_inference_form_matches_and_has_no_batchnorm(name):
    from prunekit.export import fold_batchnorm

    model = randomized(name)
    pruner = pk.create("structured", model, sparsity=0.5, round_to=8, input_shape=(3, 32, 32))
    pruner.prune()
    x = torch.randn(2, 3, 32, 32)
    compact = compact_model(model, pruner.masks, x).model
    folded = fold_batchnorm(compact)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in compact.modules())  # the original is untouched
    assert max_diff(folded, compact, x) <= 1e-5
