"""GMP, SET, RigL and GraNet: schedule goldens, hand-computed updates, invariants, resume, FLOPs."""
import copy
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.methods import PruneContext
from prunekit.sparsity.topk import keep_largest, kth_largest
from prunekit.sparsity import CubicSchedule, erk, num_keep


def tiny_net():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def make(name, total=40, spe=4, seed=0, **settings):
    torch.manual_seed(seed)
    model = tiny_net()
    pruner = pk.create(name, model, **settings)
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    pruner.setup(PruneContext(total_steps=total, steps_per_epoch=spe))
    pruner.on_init(PruneContext())
    return model, pruner, opt


def train(model, opt, data):
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# --- schedule goldens -----------------------------------------------------------------------------
def test_cubic_targets_reuse_the_reference_schedule():
    # GraNet scripts: 160 epochs of 391 steps, dT 1000, final prune epoch 80, dense -> 95%
    _, p, _ = make("granet", total=160 * 391, spe=391, sparsity=0.95, initial_sparsity=0.0,
                   update_frequency=1000, final_prune_epoch=80)
    ref = CubicSchedule(0.0, 0.95, 0, 80 * 391, 1000)
    for step in (1000, 15000, 30000):
        assert p.sparsity_at(step) == ref.sparsity_at(step)
    assert p.sparsity_at(1000) == pytest.approx(0.0890017, abs=1e-6)  # 0.95 (1 - (30/31)^3)
    assert p.sparsity_at(31000) == pytest.approx(0.95)  # exact counting adds the k_end step
    _, r, _ = make("granet", total=160 * 391, spe=391, sparsity=0.95, initial_sparsity=0.0,
                   update_frequency=1000, final_prune_epoch=80, counting="reference")
    assert r.sparsity_at(31000) is None and r.sparsity_at(30000) == pytest.approx(0.95 * (1 - 1 / 31**3))
    # GraNet_uniform's reference bounds are fractional (k_end = 31.28) and inclusive
    _, u, _ = make("granet_uniform", total=160 * 391, spe=391, sparsity=0.95, initial_sparsity=0.0,
                   update_frequency=1000, final_prune_epoch=80, counting="reference")
    assert u.sparsity_at(31000) == pytest.approx(0.95 * (1 - (1 - 31 / 31.28) ** 3))
    assert u.sparsity_at(32000) is None


def test_rho_and_drop_fraction_goldens():
    _, g, _ = make("granet", total=1000, spe=10, sparsity=0.9)
    assert g.prune_rate_at(0) == pytest.approx(0.5)
    assert g.prune_rate_at(250) == pytest.approx(0.427509, abs=1e-6)  # .005 + .495 (1 + cos(pi/4)) / 2
    assert g.prune_rate_at(500) == pytest.approx(0.2525)
    assert g.prune_rate_at(1000) == pytest.approx(0.005)
    _, r, _ = make("rigl", total=1000, spe=10, sparsity=0.9)  # end_fraction 0.75 -> T_end = 750
    assert [r.drop_fraction_at(t) for t in (0, 375, 750, 900)] == pytest.approx([0.3, 0.15, 0.0, 0.0])
    _, c, _ = make("set", total=1000, spe=10, sparsity=0.9, drop_schedule="constant")
    assert c.drop_fraction_at(500) == 0.3


# --- hand-computed GraNet update ------------------------------------------------------------------
A = [[0.9, -0.1, 0.5], [-0.3, 0.05, 0.7]]
B = [[0.2, -0.8], [0.6, 0.02]]
GRAD_A = [[0.0, 0.4, 0.9], [0.3, 0.1, 5.0]]
GRAD_B = [[7.0, 0.1], [0.2, 0.3]]


def hand_granet(counting):
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(A))
        model[1].weight.copy_(torch.tensor(B))
    model[0].weight.grad, model[1].weight.grad = torch.tensor(GRAD_A), torch.tensor(GRAD_B)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    pruner = pk.create("granet", model, sparsity=0.5, initial_sparsity=0.0, update_frequency=1,
                       final_prune_epoch=2, counting=counting)
    pruner.attach(opt)
    pruner.setup(PruneContext(total_steps=4, steps_per_epoch=1))
    pruner.on_init(PruneContext())
    pruner._update(1)
    return model, opt, pruner


def test_one_granet_update_matches_hand_computation():
    # step 1 of 4: s_1 = 0.5 (1 - (1 - 1/2)^3) = 0.4375 -> keep 10 - int(4.375) = 6 of the 10 weights:
    # |w| 0.9 .8 .7 .6 .5 .3 survive. rho_1 = .005 + .495 (1 + cos(pi/4)) / 2 = 0.42751.
    # layer A (4 active): drop ceil(1.71) = 2 smallest (.3, .5); regrow 2 by |grad| among the 4 inactive
    #   positions (.4, .9, .3, .1): A[0,2] (dropped now, keeps 0.5 and its momentum) and A[0,1] (born, 0).
    # layer B (2 active): drop ceil(.855) = 1 (.6); regrow B[0,0] (|grad| 7, born at 0).
    model, opt, pruner = hand_granet("exact")
    assert pruner.prune_rate_at(1) == pytest.approx(0.4275093, abs=1e-6)
    assert pruner.masks["0.weight"].tolist() == [[True, True, True], [False, False, True]]
    assert pruner.masks["1.weight"].tolist() == [[True, True], [False, False]]
    assert torch.equal(model[0].weight.detach(), torch.tensor([[0.9, 0.0, 0.5], [0.0, 0.0, 0.7]]))
    assert torch.equal(model[1].weight.detach(), torch.tensor([[0.0, -0.8], [0.0, 0.0]]))
    assert opt.state[model[0].weight]["momentum_buffer"].tolist() == [[1, 0, 1], [0, 0, 1]]
    assert opt.state[model[1].weight]["momentum_buffer"].tolist() == [[0, 1], [0, 0]]
    assert pruner._nnz == [4, 2]


def test_reference_counting_keeps_one_fewer_at_the_threshold():
    # reference: keep |w| > the int(10 * 0.5625) = 5th largest (0.5): only .9 .8 .7 .6 survive (k - 1).
    # A (.9, .7): drop ceil(.855) = 1 -> keep |w| > the (4 zeros + 1)-th smallest = .7; the regrowth
    #   candidates include the just-dropped A[1,2], whose |grad| 5 is the largest: it comes back at 0.7.
    # B (.8, .6): drop 1 (.6); regrow B[0,0] (|grad| 7).
    model, _, pruner = hand_granet("reference")
    assert pruner.masks["0.weight"].tolist() == [[True, False, False], [False, False, True]]
    assert model[0].weight[1, 2] == torch.tensor(0.7)
    assert pruner.masks["1.weight"].tolist() == [[True, True], [False, False]]
    assert pruner.masks.nnz() == 4 == int(10 * (1 - 0.4375)) - 1


# --- invariants -----------------------------------------------------------------------------------
@pytest.mark.parametrize("counting", ["exact", "reference"])
def test_global_pruning_count(counting):
    _, p, _ = make("gmp", sparsity=0.9, update_frequency=4, final_prune_epoch=5, counting=counting)
    total = p.masks.numel()
    p.magnitude_prune_(0.73)
    expected = num_keep(total, 0.73) if counting == "exact" else int(total * 0.27) - 1
    assert p.masks.nnz() == expected
    kept = torch.cat([w.detach().abs()[m] for w, m in zip(p.masks.params, p.masks.values())])
    dropped = torch.cat([w.detach().abs()[~m] for w, m in zip(p.masks.params, p.masks.values())])
    assert kept.min() >= dropped.max()


@pytest.mark.parametrize("name,growth", [("granet", "gradient"), ("granet", "random"), ("rigl", None), ("set", None)])
def test_regrowth_conserves_counts_and_grows_only_at_zero_positions(name, growth):
    extra = {"growth": growth, "initial_sparsity": 0.6} if name == "granet" else {}
    model, p, opt = make(name, sparsity=0.8, update_frequency=20, **extra)
    train(model, opt, batches(3))
    before = {n: m.clone() for n, m in p.masks.items()}
    weights = [w.detach().clone() for w in p.masks.params]
    born = p.drop_and_grow_(0.5, step=3, round_up=name == "granet")
    p.enforce()
    for (n, m), w_old, w in zip(p.masks.items(), weights, p.masks.params):
        assert int(m.sum()) == int(before[n].sum()), n  # count conserved exactly
        assert torch.equal(born[n], m & ~before[n])  # born only where the mask was zero
        assert born[n].any()
        assert torch.count_nonzero(w[born[n]]) == 0
        buf = opt.state[w]["momentum_buffer"]
        assert torch.count_nonzero(buf[born[n]]) == 0
        survivors = m & before[n]  # includes weights dropped and regrown in the same call
        assert torch.equal(w[survivors], w_old[survivors])
        assert torch.count_nonzero(w[~m]) == 0


def test_selection_matches_a_stable_sort():
    g = torch.Generator().manual_seed(3)
    for n, ties in [(1000, False), (50_000, True), (70_001, False)]:
        x = torch.randn(n, generator=g)
        if ties:
            x = (4 * x).round()
        eligible = torch.rand(n, generator=g) < 0.3
        count = int(eligible.sum())
        for k in (1, count // 7, count // 2, count - 3):
            order = torch.sort(torch.where(eligible, x, -torch.inf), descending=True, stable=True).indices[:k]
            expected = torch.zeros(n, dtype=torch.bool)
            expected[order] = True
            assert torch.equal(keep_largest(x, k, eligible), expected)
            assert kth_largest(x, k + 1) == torch.sort(x, descending=True).values[k]


# --- whole runs ---------------------------------------------------------------------------------
RUNS = [
    ("gmp", {}), ("gmp", {"allocation": "uniform"}), ("gmp", {"allocation": "erk"}),
    ("granet", {"initial_sparsity": 0.0}), ("granet", {"initial_sparsity": 0.5}),
    ("granet", {"initial_sparsity": 0.5, "init_bernoulli": False, "growth": "random"}),
    ("granet_uniform", {"initial_sparsity": 0.0}), ("rigl", {}), ("set", {}), ("rigl", {"allocation": "uniform"}),
]


def layer_budgets(pruner, sparsity):
    shapes = {n: tuple(m.shape) for n, m in pruner.masks.items()}
    alloc = pruner.config.allocation
    if alloc == "global":
        return None
    if alloc == "uniform" and hasattr(pruner, "step_allocation"):
        return pruner.step_allocation(sparsity)  # the classifier rule of GMP_uniform/GraNet_uniform
    return erk(shapes, sparsity) if alloc == "erk" else dict.fromkeys(shapes, sparsity)


@pytest.mark.parametrize("name,settings", RUNS)
def test_a_whole_run_ends_exactly_at_the_target(name, settings):
    gradual = name in ("gmp", "granet", "granet_uniform")
    sched = {"final_prune_epoch": 5} if gradual else {"end_fraction": 1.0}
    model, p, opt = make(name, sparsity=0.9, update_frequency=4, **sched, **settings)
    start = {n: m.clone() for n, m in p.masks.items()}
    train(model, opt, batches(24))
    mid = {n: m.clone() for n, m in p.masks.items()}  # the last pruning step was at step 20
    train(model, opt, batches(16, seed=2))
    budgets = layer_budgets(p, 0.9)
    if budgets is None:
        assert p.masks.nnz() == num_keep(p.masks.numel(), 0.9)
    else:
        for n, m in p.masks.items():
            assert int(m.sum()) == num_keep(m.numel(), budgets[n]), n
    for w, m in zip(p.masks.params, p.masks.values()):
        assert torch.count_nonzero(w[~m]) == 0
    moved = any(not torch.equal(p.masks[n], mid[n]) for n in mid)
    assert moved == (name != "gmp")  # regeneration keeps running after the last pruning step
    if not gradual:
        assert all(int(p.masks[n].sum()) == int(start[n].sum()) for n in start)


@pytest.mark.parametrize("name", ["granet", "rigl", "set", "gmp"])
def test_state_dict_round_trip_continues_identically(name):
    settings = {"final_prune_epoch": 5} if name in ("granet", "gmp") else {}
    model, p, opt = make(name, sparsity=0.9, update_frequency=4, **settings)
    train(model, opt, batches(10))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), p.state_dict()))
    train(model, opt, batches(22, seed=5))
    model2, p2, opt2 = make(name, seed=9, sparsity=0.9, update_frequency=4, **settings)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    p2.load_state_dict(saved[2])
    train(model2, opt2, batches(22, seed=5))
    for n in p.masks:
        assert torch.equal(p.masks[n], p2.masks[n])
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert p.training_flops_ratio() == p2.training_flops_ratio()


def test_rigl_update_step_applies_no_gradient_step():
    model, p, opt = make("rigl", sparsity=0.8, update_frequency=4)
    train(model, opt, batches(3))
    before = [w.detach().clone() for w in model.parameters()]
    train(model, opt, batches(1, seed=7))  # step 4: a mask update
    for (name, w), w0 in zip(model.named_parameters(), before):
        if name in p.masks:
            keep = p.masks[name]
            assert torch.equal(w[keep], w0[keep]), name  # survivors unchanged, the new ones are zero
        else:
            assert torch.equal(w, w0), name


@pytest.mark.parametrize("name", ["granet", "gmp", "rigl", "set"])
def test_no_host_sync_outside_update_steps(monkeypatch, name):
    settings = {"final_prune_epoch": 5} if name in ("granet", "gmp") else {}
    model, p, opt = make(name, sparsity=0.9, update_frequency=4, **settings)
    train(model, opt, batches(2))

    def boom(*args, **kwargs):
        raise AssertionError("host sync on a non-update step")

    for attr in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, attr, boom)
    p.after_backward(3)
    p.after_optimizer_step(3)


# --- FLOPs ----------------------------------------------------------------------------------------
def linear_run(name, steps, **settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    p = pk.create(name, model, total_steps=steps, steps_per_epoch=1, **settings)
    opt = p.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    p.on_init(PruneContext())
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 10)).pow(2).sum().backward()
        opt.step()
    return p


def test_training_flops_ratio_by_hand():
    # RigL, density .25, updates at steps 2, 4, 6, 8 pay 2 f_S + f_D: (8*3*.25 + 4*.75) / 24 = 0.375
    p = linear_run("rigl", 8, sparsity=0.75, allocation="uniform", update_frequency=2, end_fraction=1.0)
    assert p.training_flops_ratio() == pytest.approx(0.375)
    # SET: random growth needs no dense gradient -> the density
    assert linear_run("set", 8, sparsity=0.75, allocation="uniform", update_frequency=2).training_flops_ratio() == 0.25
    # GMP from dense: 100 weights for steps 1-2, 57 (s = .4375) for 3-4, 50 for 5-8 -> 514 / 800
    p = linear_run("gmp", 8, sparsity=0.5, update_frequency=2, final_prune_epoch=4)
    assert p.training_flops_ratio() == pytest.approx(514 / 800)
    assert p.training_flops_ratio(input_shape=(10,)) == pytest.approx(514 / 800)


# --- errors and options ---------------------------------------------------------------------------
def test_clear_errors():
    model = tiny_net()
    with pytest.raises(ConfigError, match="initial_sparsity"):
        pk.create("granet", model, sparsity=0.5, initial_sparsity=0.8)
    p = pk.create("granet", model, sparsity=0.9, update_frequency=100)
    with pytest.raises(ConfigError, match="no pruning step"):
        p.setup(PruneContext(total_steps=40, steps_per_epoch=4))
    with pytest.raises(ConfigError, match="after the end of training"):
        gmp = pk.create("gmp", model, sparsity=0.9, final_prune_epoch=20)
        gmp.setup(PruneContext(total_steps=40, steps_per_epoch=4))
    p = pk.create("rigl", model, sparsity=0.9)
    opt = p.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.randn(2, 12)).sum().backward()
    with pytest.raises(ConfigError, match="training length"):
        opt.step()


def test_granet_sparse_start_is_bernoulli_erk_by_default():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 100))
    p = pk.create("granet", model, sparsity=0.9, initial_sparsity=0.5)
    p.on_init(PruneContext())
    shapes = {n: tuple(m.shape) for n, m in p.masks.items()}
    budgets = erk(shapes, 0.5)
    counts = [int(m.sum()) for m in p.masks.values()]
    exact = [num_keep(math.prod(s), budgets[n]) for n, s in shapes.items()]
    assert counts != exact and all(abs(c - e) < 0.02 * e for c, e in zip(counts, exact))
    q = pk.create("granet", model, sparsity=0.9, initial_sparsity=0.5, init_bernoulli=False)
    q.on_init(PruneContext())
    assert [int(m.sum()) for m in q.masks.values()] == exact
