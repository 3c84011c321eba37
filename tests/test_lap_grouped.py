"""LAP and OBD on grouped and depthwise convolutions equal the same layers written as block-diagonal dense
convolutions (the grouped weight's zeros contribute nothing), at the positions the grouped conv has."""
import pytest
import torch
from torch import nn

from prunekit.scoring.lap import LookaheadScorer, diag_ggn


def block_diagonal(conv: nn.Conv2d) -> nn.Conv2d:
    """The same function as ``conv`` as an ungrouped conv whose weight is zero off the group blocks."""
    g, out, per_in = conv.groups, conv.out_channels, conv.in_channels // conv.groups
    dense = nn.Conv2d(conv.in_channels, out, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        dense.weight.zero_()
        for o in range(out):
            grp = o // (out // g)
            dense.weight[o, grp * per_in:(grp + 1) * per_in] = conv.weight[o]
        if conv.bias is not None:
            dense.bias.copy_(conv.bias)
    return dense


def on_block(dense_tensor: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    g, out, per_in = conv.groups, conv.out_channels, conv.in_channels // conv.groups
    rows = [dense_tensor[o, (o // (out // g)) * per_in:((o // (out // g)) + 1) * per_in] for o in range(out)]
    return torch.stack(rows)


def nets(groups: int):
    torch.manual_seed(0)
    mid = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), mid, nn.ReLU(),
                            nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 5))
    dense = nn.Sequential(*[block_diagonal(m) if m is mid else m for m in grouped])
    return grouped, dense, mid


@pytest.mark.parametrize("groups", [2, 8])
def test_lap_scores_of_a_grouped_conv_equal_its_block_diagonal_form(groups):
    grouped, dense, mid = nets(groups)
    layers = [0, 2, 4, 6]
    gs = LookaheadScorer([grouped[i].weight for i in layers], groups=[getattr(grouped[i], "groups", 1) for i in layers])
    ds = LookaheadScorer([dense[i].weight for i in layers])
    for i in range(len(layers)):
        expected = ds.score(i)
        got = gs.score(i)
        if i == 1:
            expected = on_block(expected, mid)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("groups", [2, 8])
def test_obd_hessian_of_a_grouped_conv_equals_its_block_diagonal_form(groups):
    grouped, dense, mid = nets(groups)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 3, 6, 6, generator=g), torch.randint(0, 5, (6,), generator=g))]
    h_grouped = diag_ggn(grouped, [grouped[2]], batches, None)[0]
    h_dense = diag_ggn(dense, [dense[2]], batches, None)[0]
    torch.testing.assert_close(h_grouped, on_block(h_dense, mid), rtol=1e-5, atol=1e-8)
