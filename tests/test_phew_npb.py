"""PHEW (Patil & Dovrolis, ICML 2021) and NPB (Pham et al., NeurIPS 2023): walk probabilities and walk
statistics, the reference's shortcut handling, NPB's per-layer program (objective goldens, the greedy
optimum against brute force and the MILP), mask construction, fine-tuning, exact budgets, seeds."""
import itertools

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.diagnostics import connectivity
from prunekit.errors import ConfigError, MaskError
from prunekit.scoring.npb import (LayerProgram, counts_to_mask, fill_to_budget, input_paths, max_paths, objective,
                                  position_ranks, reallocate_ineffective, solve_greedy, spread_rows)
from prunekit.scoring.paths import PathCounter
from prunekit.scoring.phew import PhewWalker, trace_layers, transition_probabilities
from prunekit.sparsity import erk, num_keep


def mlp(*widths, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def walker_for(model, shape, jump="reference"):
    chain = trace_layers(model, shape)
    params = dict(model.named_parameters())
    offsets, at = [], 0
    for c in chain:
        offsets.append(at)
        at += c.numel
    return PhewWalker(chain, [params[c.name].detach() for c in chain], offsets, jump), chain, offsets


# --------------------------------------------------------------------------------------------- PHEW
def test_phew_transition_probabilities_golden():
    w = torch.zeros(2, 3, 1, 2)
    w[0, 0, 0] = torch.tensor([1.0, -3.0])  # L1 4
    w[1, 0, 0] = torch.tensor([2.0, 4.0])   # L1 6
    w[1, 1, 0] = torch.tensor([0.5, 0.0])   # L1 0.5; kernel (0, 1) is all zero, input 2 has no weight
    fwd, bwd, pos = transition_probabilities(w)
    assert torch.allclose(fwd, torch.tensor([[0.4, 0.6], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64))
    assert torch.allclose(bwd, torch.tensor([[1.0, 0.0, 0.0], [6 / 6.5, 0.5 / 6.5, 0.0]], dtype=torch.float64))
    assert torch.allclose(pos[0, 0], torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.allclose(pos[1, 0], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    assert torch.allclose(pos[0, 1], torch.tensor([0.5, 0.5], dtype=torch.float64))  # zero kernel: uniform
    assert torch.allclose(pos[1, 1], torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_phew_walks_follow_magnitudes_on_two_layer_net():
    model = mlp(3, 2, 2)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-3.0, 2.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[0.5, 2.0], [-1.5, 2.0]]))
    walker, chain, off = walker_for(model, (3,))
    gen = torch.Generator().manual_seed(0)
    n = 40000
    fw = walker.forward_walks(torch.zeros(n, dtype=torch.long), gen)  # every walk starts at input 0
    first, second = fw[:, 0], fw[:, 1] - off[1]
    assert bool((first % 3 == 0).all())  # weights (o, 0) only
    p_o = torch.tensor([1 / 4, 3 / 4])  # |w[:, 0]| = [1, 3]
    p_o2_given_o = torch.tensor([[0.5 / 2, 1.5 / 2], [2 / 4, 2 / 4]])  # column o of layer 2
    joint = torch.zeros(2, 2)
    for o in range(2):
        for o2 in range(2):
            joint[o, o2] = ((first == o * 3) & (second == o2 * 2 + o)).float().mean()
    assert torch.allclose(joint, p_o[:, None] * p_o2_given_o, atol=0.01)
    bw = walker.backward_walks(torch.ones(n, dtype=torch.long), gen)  # every walk starts at output 1
    last = bw[:, 1] - off[1]
    assert torch.allclose(torch.stack([(last == 2).float().mean(), (last == 3).float().mean()]),
                          torch.tensor([1.5 / 3.5, 2 / 3.5]), atol=0.01)
    assert bool((bw[:, 0] >= 0).all())  # every backward walk reaches the input


def test_phew_budget_of_one_walk_is_one_path():
    model = mlp(4, 5, 5, 3)  # 60 weights, keep 3 = the first forward walk
    pruner = pk.create("phew", model, sparsity=0.95, input_shape=(4,), seed=3)
    pruner.prune()
    assert pruner.masks.nnz() == 3
    c = connectivity(model, pruner.masks, (4,))
    assert c.effective == 3 and c.log_paths == pytest.approx(0.0)
    assert bool(pruner.masks["0.weight"][:, 0].any())  # round robin starts at input unit 0


def test_phew_flatten_maps_channels_to_their_features():
    model = pk.models.create("lenet5")
    walker, chain, off = walker_for(model, (3, 32, 32))
    assert [c.name for c in chain] == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    gen = torch.Generator().manual_seed(0)
    for rec in (walker.forward_walks(torch.arange(300) % 3, gen), walker.backward_walks(torch.arange(300) % 10, gen)):
        channel = (rec[:, 1] - off[1]) // 25 // 6  # conv2 output channel
        feature = (rec[:, 2] - off[2]) % 400  # fc1 input feature
        assert torch.equal(feature // 25, channel)


def shortcut_visits(jump):
    torch.manual_seed(0)
    model = pk.models.create("cifar_resnet20")
    walker, chain, _ = walker_for(model, (3, 32, 32), jump)
    gen = torch.Generator().manual_seed(0)
    return chain, walker.forward_walks(torch.arange(4000) % 3, gen) >= 0, walker.backward_walks(torch.arange(4000) % 10, gen) >= 0


def test_phew_reference_shortcut_walks():
    chain, fwd, bwd = shortcut_visits("reference")
    q = next(i for i, c in enumerate(chain) if c.name == "layer2.0.shortcut.0.weight")
    assert q == 9 and chain[q].branch_of == 7 and chain[16].branch_of == 14
    took = fwd[:, q]
    assert 0.45 < took.float().mean() < 0.55
    # the reference decides one layer early: a forward walk into the shortcut also skips layer1.2.conv2 (6)
    assert not fwd[took][:, 6:9].any() and fwd[took][:, 5].all()
    assert fwd[~took][:, 6:9].all()
    took = bwd[:, q]  # backward: shortcut or main branch, 1/2 each, then the layer before the block
    assert 0.45 < took.float().mean() < 0.55
    assert not bwd[took][:, 7:9].any() and bwd[took][:, 6].all() and bwd[~took][:, 6:9].all()


def test_phew_block_input_shortcut_walks():
    _, fwd, _ = shortcut_visits("block_input")
    took = fwd[:, 9]
    assert 0.45 < took.float().mean() < 0.55
    assert fwd[took][:, 6].all() and not fwd[took][:, 7:9].any() and fwd[~took][:, 6:9].all()


@pytest.mark.parametrize("name", ["lenet5", "cifar_resnet20"])
def test_phew_exact_global_budget_and_seed(name):
    def run(seed):
        torch.manual_seed(0)
        model = pk.models.create(name)
        pruner = pk.create("phew", model, sparsity=0.9, input_shape=(3, 32, 32), seed=seed)
        pruner.prune()
        return pruner.masks

    a, b, c = run(1), run(1), run(2)
    assert a.nnz() == num_keep(a.numel(), 0.9)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_phew_errors_for_unreachable_weights_and_non_chains():
    model = mlp(2, 2, 2)
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
        model[2].weight[1, 1] = 0.0
    with pytest.raises(MaskError, match="stopped finding new weights"):  # 6 reachable, 7 asked
        pk.create("phew", model, sparsity=0.125, input_shape=(2,), seed=0).prune()

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    with pytest.raises(MaskError, match="cannot step"):
        pk.create("phew", Concat(), sparsity=0.5, input_shape=(4,)).prune()


# ---------------------------------------------------------------------------------------------- NPB
def test_npb_max_paths_golden_with_reference_quirk():
    p = torch.tensor([1.0, 4.0, 2.0, 3.0])
    assert max_paths(p, n=5, c_out=2, p=1) == 16.0  # 2 full rows (4, 3) x 2 + 1 x 2
    assert max_paths(p, n=1, c_out=2, p=1) == 24.0  # int(1/2) = 0: sort(P)[-0:] is all of P: 10 x 2 + 1 x 4
    assert max_paths(p, n=8, c_out=2, p=1) == 20.0  # 4 full rows, no next row


def test_npb_objective_golden():
    prog = LayerProgram(torch.tensor([3.0, 1.0], dtype=torch.float64), c_out=3, n=3, p=2, alpha=0.5, beta=1.0)
    counts = torch.tensor([[2, 0, 1], [0, 0, 0]])
    # nodes: row 1 and column 1 empty -> (5 - 2) / 5; max_path (f = 0): (3 + 1) * 6 + 3 * 3 = 33
    # paths: 3 * 3 / 33; kernels: (3 - 4 empty) / 3
    assert objective(counts, prog) == pytest.approx(0.5 * 0.6 + 0.5 * 9 / 33 - 1 / 3)


def test_npb_greedy_golden():
    prog = LayerProgram(torch.tensor([1.0, 0.0], dtype=torch.float64), c_out=2, n=3, p=2, alpha=0.5, beta=0.0)
    counts = solve_greedy(prog)
    # both rows and both columns covered, the extra unit on the row with paths; spread cyclically
    assert counts.tolist() == [[1, 1], [1, 0]]
    assert objective(counts, prog) == pytest.approx(0.5 + 0.5 * 2 / 7)


def test_npb_greedy_is_optimal_by_brute_force():
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        c_in, c_out, p = 2, 3, 2
        n = int(torch.randint(0, c_in * c_out * p + 1, (1,), generator=gen))
        paths = torch.floor(torch.rand(c_in, generator=gen, dtype=torch.float64) * 4)  # ties and zeros
        prog = LayerProgram(paths, c_out, n, p, float(torch.rand(1, generator=gen)), float(torch.rand(1, generator=gen)))
        best = max(objective(torch.tensor(m).view(c_in, c_out), prog)
                   for m in itertools.product(range(p + 1), repeat=c_in * c_out) if sum(m) <= n)
        counts = solve_greedy(prog)
        assert int(counts.sum()) == n and int(counts.max()) <= p
        assert objective(counts, prog) == pytest.approx(best, abs=1e-12)


def test_npb_greedy_matches_milp_optimum():
    pytest.importorskip("scipy.optimize")
    from prunekit.scoring.npb import solve_milp

    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        c_in, c_out = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        p = int(torch.randint(1, 10, (1,), generator=gen))
        n = int(torch.randint(0, c_in * c_out * p + 1, (1,), generator=gen))
        paths = torch.rand(c_in, generator=gen, dtype=torch.float64) * 10
        prog = LayerProgram(paths, c_out, n, p, float(torch.rand(1, generator=gen)), 2 * float(torch.rand(1, generator=gen)))
        a, b = solve_greedy(prog), solve_milp(prog)
        assert int(a.sum()) == int(b.sum()) == n
        assert objective(a, prog) == pytest.approx(objective(b, prog), rel=2e-4, abs=1e-9)


def test_npb_mask_construction_goldens():
    assert spread_rows(torch.tensor([5, 1, 0]), c_out=3, p=2).tolist() == [[2, 2, 1], [1, 0, 0], [0, 0, 0]]
    prog = LayerProgram(torch.tensor([1.0, 5.0], dtype=torch.float64), c_out=2, n=4, p=2, alpha=0.5, beta=0.0)
    assert fill_to_budget(torch.tensor([[1, 0], [0, 0]]), prog).tolist() == [[1, 0], [2, 1]]
    w = torch.tensor([[[[0.1, -0.5, 0.3]], [[1.0, 2.0, 3.0]]]])  # (C_out 1, C_in 2, 1, 3)
    ranks = position_ranks(w, "magnitude", torch.Generator())
    mask = counts_to_mask(torch.tensor([[2], [1]]), (1, 3), ranks)
    assert mask.tolist() == [[[[False, True, True]], [[False, False, True]]]]
    rand = counts_to_mask(torch.tensor([[2], [1]]), (1, 3), position_ranks(w, "random", torch.Generator().manual_seed(0)))
    assert rand.sum(dim=(2, 3)).tolist() == [[2, 1]]


def test_npb_reallocates_ineffective_weights_within_the_layer():
    mask = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [1, 1]]], dtype=torch.bool)  # (out 2, in 2, 2)
    reach = torch.tensor([[[1, 1], [1, 1]], [[0, 0], [0, 0]]], dtype=torch.bool)  # output 1 is a dead end
    out = reallocate_ineffective(mask, reach, by_column=False)
    assert out.tolist() == [[[True, True], [True, True]], [[False, False], [False, False]]]
    short = reach.clone()
    short[0, 1, 1] = False  # one free effective position for two ineffective weights
    out = reallocate_ineffective(mask, short, by_column=False)
    assert int(out.sum()) == 4 and bool(out[0, 1, 0]) and int(out[1].sum()) == 1
    one = mask.clone()
    one[1, 1, 1] = False  # a single ineffective weight is left alone (reference: n_ineff > 1)
    assert torch.equal(reallocate_ineffective(one, reach, by_column=False), one)


def test_npb_input_paths_are_path_counts():
    model = mlp(3, 4, 2)
    chain = trace_layers(model, (3,))
    m1 = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float64)
    with PathCounter(model, ["0.weight", "2.weight"], (3,), dtype=torch.float64) as pc, torch.no_grad():
        p0 = input_paths(pc, model, chain[0], [m1, torch.ones(2, 4, dtype=torch.float64)])
        p1 = input_paths(pc, model, chain[1], [m1, torch.ones(2, 4, dtype=torch.float64)])
    assert p0.tolist() == [1.0, 1.0, 1.0] and p1.tolist() == [2.0, 0.0, 3.0, 1.0]
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    chain = trace_layers(conv, (2, 4, 4))
    with PathCounter(conv, ["0.weight", "3.weight"], (2, 4, 4), dtype=torch.float64) as pc, torch.no_grad():
        ones = [torch.ones(3, 2, 3, 3, dtype=torch.float64), torch.ones(2, 3, 1, 1, dtype=torch.float64)]
        p1 = input_paths(pc, conv, chain[1], ones)
    # a dense 3x3 conv over 2 channels of a 4x4 all-ones input: 2 x (4 corners x 4 + 8 edges x 6 + 4 x 9)
    assert p1.tolist() == [2.0 * (16 + 48 + 36)] * 3


def test_npb_resnet20_roles_max_p_schedule_budgets_and_fine_tune():
    torch.manual_seed(0)
    model = pk.models.create("cifar_resnet20")
    pruner = pk.create("npb", model, sparsity=0.99, input_shape=(3, 32, 32), seed=0)
    pruner.prune()
    target = erk({n: tuple(m.shape) for n, m in pruner.masks.items()}, 0.99)
    for n, st in pruner.masks.per_layer().items():
        assert st["nnz"] == num_keep(st["numel"], target[n]), n
    info = {r["layer"]: r for r in pruner.layers}
    assert info["conv1.weight"]["role"] == "first" and info["fc.weight"]["role"] == "linear"
    assert info["layer2.0.shortcut.0.weight"]["role"] == "shortcut"
    assert [info[f"layer{s}.1.conv1.weight"]["max_p"] for s in (1, 2, 3)] == [9, 7, 5]  # -2 after each shortcut
    c = connectivity(model, pruner.masks, (3, 32, 32))
    assert all(r["effective"] == r["kept"] for n, r in c.layers.items() if n != "fc.weight")  # fine-tuned convs


def test_npb_seed_determinism_and_chunking():
    def run(seed, **kw):
        torch.manual_seed(0)
        model = pk.models.create("lenet5")
        pruner = pk.create("npb", model, sparsity=0.9, input_shape=(3, 32, 32), seed=seed, **kw)
        pruner.prune()
        return pruner

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)  # random kernel positions
    assert [r["chunks"] for r in a.layers] == [1, 1, 12, 9, 1]  # fc1 120 x 400, fc2 84 x 120 > 5120: rows of 10
    d = run(1, linear_chunk_above=10**9, kernel_positions="magnitude")
    assert [r["chunks"] for r in d.layers] == [1] * 5
    assert d.masks.nnz() == a.masks.nnz()


def test_npb_milp_solver_and_config_errors():
    pytest.importorskip("scipy.optimize")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    pruner = pk.create("npb", model, sparsity=0.8, input_shape=(1, 6, 6), seed=0, solver="milp",
                       node_constraint=True, min_nodes=2, allocation="uniform")
    pruner.prune()
    for st in pruner.masks.per_layer().values():
        assert st["nnz"] == num_keep(st["numel"], 0.8)
    with pytest.raises(ConfigError, match="solver='milp'"):
        pk.create("npb", model, sparsity=0.8, min_nodes=2)
    with pytest.raises(ConfigError, match="alpha"):
        pk.create("npb", model, sparsity=0.8, alpha=1.5)


def test_npb_ties_between_input_units_are_broken_by_seed_not_index():
    """An MLP's input pixels are all worth the same to NPB: ``tie_break: index`` gives every chunk of output
    units the first ones (on MNIST the blank top rows), the default a seeded random order per chunk, with
    the same objective."""
    def first_layer_inputs(**kw):
        model = pk.models.create("lenet300_100")
        pruner = pk.create("npb", model, sparsity=0.99, input_shape=(1, 28, 28), seed=0, **kw)
        masks = pruner.prune()
        return set((masks["layers.0.weight"].sum(0) > 0).nonzero().flatten().tolist()), pruner

    by_index, p_index = first_layer_inputs(tie_break="index")
    by_seed, p_seed = first_layer_inputs()
    assert by_index == set(range(len(by_index)))  # the lowest indices
    assert len(by_index) < 100 and len(by_seed) > 5 * len(by_index)
    assert by_seed == first_layer_inputs()[0]  # the seed decides
    assert p_seed.layers[0]["objective"] == pytest.approx(p_index.layers[0]["objective"])
