"""Contracts every registered method must meet (parametrized over the registry)."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.methods import METHODS, PruneContext
from prunekit.sparsity import allocate, num_keep


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )


def batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def ctx():
    return PruneContext(batches=batches(), loss_fn=nn.functional.cross_entropy, total_steps=20, steps_per_epoch=4)


def build(name, sparsity=0.8, seed=0, **kw):
    torch.manual_seed(seed)
    model = small_cnn()
    settings = {"sparsity": sparsity, **kw} if name != "dense" else {}
    if name == "random":
        settings["seed"] = seed
    pruner = pk.create(name, model, **settings)
    return model, pruner


def prune_now(pruner):
    if pruner.schedule == "init":
        pruner.on_init(ctx())
    else:
        pruner.prune(ctx())


def train_steps(model, pruner, steps=5):
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for x, y in batches(steps, seed=1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


PRUNING = [n for n in METHODS.names() if n != "dense"]
# methods whose sparsity counts channels (``unit="channel"``) check their exact counts per group in their own tests
WEIGHT_UNIT = [n for n in PRUNING if METHODS.meta(n).get("unit", "weight") == "weight"]


@pytest.mark.parametrize("name", WEIGHT_UNIT)
def test_exact_target_sparsity(name):
    model, pruner = build(name)
    prune_now(pruner)
    total = pruner.masks.numel()
    alloc = getattr(pruner.config, "allocation", "global")
    if alloc == "global":
        assert pruner.masks.nnz() == num_keep(total, 0.8)
    else:
        # layer-wise: uniform budgets, or ERK/ER ones when that is the method's default (SET, RigL)
        shapes = {n: tuple(m.shape) for n, m in pruner.masks.items()}
        budgets = allocate(alloc, shapes, 0.8) if alloc in ("erk", "er") else dict.fromkeys(shapes, 0.8)
        for layer, stats in pruner.masks.per_layer().items():
            assert stats["nnz"] == num_keep(stats["numel"], budgets[layer]), layer


@pytest.mark.parametrize("name", WEIGHT_UNIT)
@pytest.mark.parametrize("alloc", ["uniform", "erk"])
def test_layerwise_allocations_exact_per_layer(name, alloc):
    from prunekit.sparsity import erk as erk_alloc

    if "allocation" not in METHODS.get(name).Config.model_fields:
        pytest.skip("method has no allocation setting")
    model, pruner = build(name, allocation=alloc)
    prune_now(pruner)
    shapes = {n: tuple(m.shape) for n, m in pruner.masks.items()}
    target = erk_alloc(shapes, 0.8) if alloc == "erk" else dict.fromkeys(shapes, 0.8)
    for layer, stats in pruner.masks.per_layer().items():
        assert stats["nnz"] == num_keep(stats["numel"], target[layer]), layer


@pytest.mark.parametrize("name", PRUNING)
def test_pruned_weights_stay_zero(name):
    model, pruner = build(name)
    prune_now(pruner)
    train_steps(model, pruner)
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p[~m]) == 0


@pytest.mark.parametrize("name", METHODS.names())
def test_same_seed_same_masks_and_state_round_trip(name):
    _, a = build(name, seed=5)
    _, b = build(name, seed=5)
    prune_now(a)
    prune_now(b)
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n])
    model_c, c = build(name, seed=6)
    c.load_state_dict(a.state_dict())
    for n in a.masks:
        assert torch.equal(c.masks[n], a.masks[n])


def test_dense_changes_nothing():
    model, pruner = build("dense")
    before = [p.clone() for p in model.parameters()]
    pruner.prune(ctx())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert pruner.masks.sparsity() == 0.0


def test_magnitude_global_keeps_largest():
    model, pruner = build("magnitude", sparsity=0.5)
    weights = torch.cat([p.detach().abs().flatten() for p in pruner.masks.params])
    threshold = weights.kthvalue(weights.numel() - num_keep(weights.numel(), 0.5)).values
    pruner.prune()
    kept = torch.cat([p.detach().abs()[m] for p, m in zip(pruner.masks.params, pruner.masks.values())])
    assert kept.min() >= threshold


def test_user_loop_api_on_any_module():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    pruner = pk.create("magnitude", model, sparsity=0.6, allocation="uniform")
    pruner.prune()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 5)).pow(2).sum().backward()
        opt.step()
        pruner.step()
    assert pruner.masks.sparsity() == pytest.approx(1 - (14 + 9) / 56)
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p[~m]) == 0
