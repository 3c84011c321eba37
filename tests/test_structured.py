"""The ``structured`` method: per-group channel counts, scorers, rounding, enforcement, state."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.export import compact_model
from prunekit.methods import PruneContext
from prunekit.methods.structured import rounded_keep
from prunekit.models import create
from prunekit.sparsity import num_keep

pytest.importorskip("torch_pruning")


def chain():
    """conv(1->8)-BN-ReLU-conv(8->6)-ReLU-pool-flatten-fc: two prunable groups (8 and 6 channels)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 3))


def batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def kept_filters(mask):
    return mask.reshape(mask.shape[0], -1).any(1)


def test_rounded_keep_goldens():
    assert rounded_keep(16, 8, 8) == 8
    assert rounded_keep(32, 13, 8) == 16  # 1.625 multiples -> 2
    assert rounded_keep(32, 11, 8) == 8  # 1.375 -> 1
    assert rounded_keep(10, 3, 8) == 8  # at least one multiple
    assert rounded_keep(6, 3, 8) == 3  # a group narrower than round_to is not rounded
    assert rounded_keep(64, 60, 8) == 64 and rounded_keep(5, 0, 1) == 1


def test_l1_keeps_largest_filters_and_masks_readers():
    model = chain()
    with torch.no_grad():
        scale = torch.tensor([5.0, 0.1, 4.0, 0.2, 3.0, 0.3, 2.0, 0.4]).view(8, 1, 1, 1)
        model[0].weight.copy_(torch.ones_like(model[0].weight) * scale)
    pruner = pk.create("structured", model, sparsity=0.5, input_shape=(1, 8, 8))
    pruner.prune()
    assert kept_filters(pruner.masks["0.weight"]).tolist() == [True, False, True, False, True, False, True, False]
    reads = pruner.masks["3.weight"].any(dim=(0, 2, 3))  # the next conv's input channels follow
    assert reads.tolist() == [True, False, True, False, True, False, True, False]
    assert kept_filters(pruner.masks["3.weight"]).sum() == num_keep(6, 0.5)
    assert torch.count_nonzero(model[1].weight[1::2]) == 0 and torch.count_nonzero(model[1].bias[1::2]) == 0
    assert torch.count_nonzero(model[3].bias) == num_keep(6, 0.5)  # removed filters' biases zeroed
    fc = pruner.masks["7.weight"]
    assert fc.any(1).all()  # the classifier's outputs are never pruned ...
    kept3 = kept_filters(pruner.masks["3.weight"])
    assert torch.equal(fc.any(0), kept3.repeat_interleave(4))  # ... its inputs follow the flatten (6 x 2 x 2)


def test_global_allocation_exact_channel_total():
    model = chain()
    pruner = pk.create("structured", model, sparsity=0.6, allocation="global", input_shape=(1, 8, 8))
    pruner.prune()
    kept = int(kept_filters(pruner.masks["0.weight"]).sum() + kept_filters(pruner.masks["3.weight"]).sum())
    assert kept == num_keep(14, 0.6)


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet20s"])
def test_round_to_8_widths(name):
    model = create(name)
    pruner = pk.create("structured", model, sparsity=0.3, round_to=8, input_shape=(3, 32, 32))
    pruner.prune()
    widths = {int(kept_filters(m).sum()) for n, m in pruner.masks.items() if n != "fc.weight"}
    assert widths and all(w % 8 == 0 for w in widths)  # keep 12 of 16 -> 16, 23 of 32 -> 24, 45 of 64 -> 48
    assert widths == {16, 24, 48}


def test_fine_tuning_keeps_channels_removed_and_export_exact():
    model = chain()
    pruner = pk.create("structured", model, sparsity=0.5, scorer="taylor", input_shape=(1, 8, 8))
    pruner.prune(PruneContext(batches=batches(), loss_fn=F.cross_entropy))
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    model.train()
    for x, y in batches(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.count_nonzero(model[1].bias[~kept_filters(pruner.masks["0.weight"])]) == 0  # BN shift held at 0
    model.eval()
    x = batches(1)[0][0]
    result = compact_model(model, pruner.masks, x)
    with torch.no_grad():
        assert float((result.model(x) - model(x)).abs().max()) <= 1e-5  # the trained masked model *is* the compact one
    assert result.model[0].out_channels == 4 and result.model[3].out_channels == 3


def test_external_scores_from_hydra_bank():
    model = chain()
    hydra = pk.create("hydra", model, sparsity=0.5, structure="filter", allocation="uniform")
    hydra.bank.init_from_model("scaled")
    scores = dict(zip(hydra.bank.names, hydra.bank.scores_v))
    pruner = pk.create("structured", model, sparsity=0.5, input_shape=(1, 8, 8))
    pruner.prune_scores(scores)
    expected = scores["0.weight"].abs().reshape(8, -1).sum(1).topk(4).indices.sort().values
    assert kept_filters(pruner.masks["0.weight"]).nonzero().flatten().tolist() == expected.tolist()


def test_state_round_trip_restores_side_masks():
    a_model, b_model = chain(), chain()
    a = pk.create("structured", a_model, sparsity=0.5, input_shape=(1, 8, 8))
    a.prune()
    b = pk.create("structured", b_model, sparsity=0.5, input_shape=(1, 8, 8))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b_model[1].bias.fill_(1.0)
    b.enforce()
    assert torch.equal(b_model[1].bias != 0, kept_filters(a.masks["0.weight"]))


def test_errors():
    with pytest.raises(ConfigError, match="scorer"):
        pk.create("structured", chain(), sparsity=0.5, scorer="nope")
    with pytest.raises(ConfigError, match="round_to"):
        pk.create("structured", chain(), sparsity=0.5, round_to=0)
    with pytest.raises(ConfigError, match="input_shape"):
        pk.create("structured", chain(), sparsity=0.5).prune()
