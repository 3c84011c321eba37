"""PHEW's walks through grouped and depthwise convolutions equal the walks through the same layers written
as block-diagonal dense convolutions (zero-norm kernels are never stepped on), mapped to the grouped
weight's positions."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.scoring.phew import PhewWalker, phew_keep, trace_layers
from tests.test_lap_grouped import block_diagonal, nets, on_block


def walker(model):
    chain = trace_layers(model, (3, 6, 6))
    weights = [model.get_parameter(c.name).detach() for c in chain]
    offsets, at = [], 0
    for c in chain:
        offsets.append(at)
        at += c.numel
    return PhewWalker(chain, weights, offsets, "reference"), at


@pytest.mark.parametrize("groups", [2, 8])
def test_phew_walks_through_a_grouped_conv_equal_its_block_diagonal_form(groups):
    grouped, dense, mid = nets(groups)
    wg, total_g = walker(grouped)
    wd, total_d = walker(dense)
    keep = total_g // 4
    kg = phew_keep(wg, total_g, keep, torch.Generator().manual_seed(5))
    kd = phew_keep(wd, total_d, keep, torch.Generator().manual_seed(5))
    sizes_g = [c.numel for c in wg.chain]
    sizes_d = [c.numel for c in wd.chain]
    for i, (pg, pd) in enumerate(zip(kg.split(sizes_g), kd.split(sizes_d))):
        shape_g = grouped.get_parameter(wg.chain[i].name).shape
        shape_d = dense.get_parameter(wd.chain[i].name).shape
        expected = pd.view(shape_d)
        if i == 1:
            assert not (expected & ~block_diagonal_mask(mid)).any()  # never off the blocks
            expected = on_block(expected, mid)
        assert torch.equal(pg.view(shape_g), expected)


def block_diagonal_mask(conv: nn.Conv2d) -> torch.Tensor:
    """True on the positions of the block-diagonal form that the grouped conv has."""
    ones = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, groups=conv.groups, bias=False)
    with torch.no_grad():
        ones.weight.fill_(1.0)
    return block_diagonal(ones).weight.bool()


def test_phew_prunes_a_depthwise_net_to_the_exact_budget():
    grouped, _, _ = nets(8)
    pruner = pk.create("phew", grouped, sparsity=0.8, seed=0, input_shape=(3, 6, 6))
    pruner.prune()
    assert pruner.masks.nnz() == pruner.masks.numel() - int(0.8 * pruner.masks.numel())
    assert all(int(m.sum()) > 0 for m in pruner.masks.values())


@pytest.mark.parametrize("groups", [2, 8])
def test_npb_solves_a_grouped_conv_group_by_group_within_its_budget(groups):
    from prunekit.methods.npb import chunk_budgets
    from prunekit.sparsity import allocate, num_keep

    grouped, _, mid = nets(groups)
    pruner = pk.create("npb", grouped, sparsity=0.7, seed=0, input_shape=(3, 6, 6))
    pruner.prune()
    shapes = {n: tuple(m.shape) for n, m in pruner.masks.items()}
    budgets = allocate("erk", shapes, 0.7)
    for name, m in pruner.masks.items():
        assert int(m.sum()) == num_keep(m.numel(), budgets[name]), name
    mask = pruner.masks["2.weight"]  # [8, 8 / groups, 3, 3]
    per_out = 8 // groups
    shares = chunk_budgets(int(mask.sum()), [per_out] * groups, mask.shape[1] * 9)
    assert [int(mask[i * per_out:(i + 1) * per_out].sum()) for i in range(groups)] == shares
    row = next(r for r in pruner.layers if r["layer"] == "2.weight")
    assert row["groups"] == groups
