"""DPaI (Xiang et al., ICLR 2025): path counting goldens, effective nodes/kernels, the surrogate gradient,
exact ERK/uniform/global budgets, ablations, the no-path abort, and equality with a literal implementation."""
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.diagnostics import connectivity
from prunekit.errors import ConfigError, LayerCollapseError
from prunekit.methods.dpai import dpai_search, initial_scores
from prunekit.scoring import PathCounter
from tests.scoring_reference import dpai_literal
from prunekit.sparsity import erk, num_keep, num_zeros

# A 3 -> 4 -> 3 -> 2 MLP with a hand-made mask (rows: outputs, columns: inputs).
M1 = [[1, 1, 0],     # h0 <- x0, x1        paths into h: [2, 1, 0, 3]
      [0, 1, 0],     # h1 <- x1
      [0, 0, 0],     # h2 <- nothing       (unreachable)
      [1, 1, 1]]     # h3 <- x0, x1, x2
M2 = [[1, 0, 1, 1],  # u0 <- h0, h2, h3    paths into u: [2+0+3, 2+1, 2] = [5, 3, 2]
      [1, 1, 0, 0],  # u1 <- h0, h1
      [1, 0, 0, 0]]  # u2 <- h0            (reachable, but a dead end: no outgoing weight)
M3 = [[1, 1, 0],     # o0 <- u0, u1        paths into o: [5+3, 3] = [8, 3]
      [0, 1, 0]]     # o1 <- u1
PATHS = 11           # 8 + 3, counted by hand above
# effective weights: layer 1 all 6; layer 2: u0<-h0, u0<-h3, u1<-h0, u1<-h1 (u0<-h2: h2 unreachable,
# u2<-h0: dead end) = 4; layer 3: all 3.  Nodes with an effective weight: 3 + 2 + 2.
EFFECTIVE, NODES = 13, 7


def golden_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3), nn.Dropout(0.5),
                          nn.GELU(), nn.Linear(3, 2))
    names = ["0.weight", "3.weight", "6.weight"]
    masks = [torch.tensor(m, dtype=torch.float32) for m in (M1, M2, M3)]
    return model, names, masks


def scores_for(masks):
    """Scores whose per-layer top-k of |s| is exactly ``masks``."""
    return torch.cat([(m + 0.5).reshape(-1) for m in masks]), [m.numel() - int(m.sum()) for m in masks]


def test_log_paths_equals_hand_count_on_mlp():
    model, names, masks = golden_mlp()
    with PathCounter(model, names, (3,)) as pc:
        log_p = pc.log_paths(masks)
    assert float(log_p) == pytest.approx(math.log(PATHS), abs=1e-6)
    assert all("forward" not in m.__dict__ for m in model.modules())  # modules restored


def test_effective_nodes_params_on_mlp_match_hand_count_and_diagnostics():
    model, names, masks = golden_mlp()
    scores, zeros = scores_for(masks)
    res = dpai_search(model, names, zeros, (3,), scores, steps=0)
    log_p, nodes, kernels, params = res.history[0].tolist()
    assert log_p == pytest.approx(math.log(PATHS), abs=1e-6)
    assert (nodes, kernels, params) == (NODES, EFFECTIVE, EFFECTIVE)  # Linear: a kernel is one weight
    assert all(torch.equal(a, b.bool()) for a, b in zip(res.masks(), masks))
    ms = pk.MaskSet({n: m.bool() for n, m in zip(names, masks)}).bind(model)
    c = connectivity(model, ms, (3,))
    assert (c.effective, c.effective_nodes, c.effective_kernels, c.kept) == (EFFECTIVE, NODES, EFFECTIVE, 15)
    assert c.effective_sparsity == pytest.approx(1 - 13 / 30)
    assert c.log_paths == pytest.approx(math.log(PATHS))


def conv_toy():
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(2, 1))
    names = ["0.weight", "2.weight", "5.weight"]
    conv1 = torch.zeros(2, 1, 2, 2)
    conv1[0, 0, 0] = 1            # channel a: two weights in one kernel; channel b: nothing
    conv2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # c0 <- a, b;  c1 <- b
    fc = torch.ones(1, 2)         # o <- c0, c1
    return model, names, [conv1, conv2, fc]


def test_effective_nodes_and_kernels_on_conv_toy():
    # effective: conv1 a's 2 weights (1 kernel, 1 node); conv2 c0<-a (b unreachable, so c0<-b and
    # c1<-b are not); fc o<-c0 (c1 unreachable): params 2+1+1, kernels 1+1+1, nodes 1+1+1
    model, names, masks = conv_toy()
    scores, zeros = scores_for(masks)
    _, nodes, kernels, params = dpai_search(model, names, zeros, (1, 3, 3), scores, steps=0).history[0].tolist()
    assert (nodes, kernels, params) == (3, 3, 4)
    c = connectivity(model, pk.MaskSet({n: m.bool() for n, m in zip(names, masks)}).bind(model), (1, 3, 3))
    assert (c.effective_nodes, c.effective_kernels, c.effective) == (3, 3, 4)
    assert c.layers["2.weight"]["kernels"] == 1 and c.layers["2.weight"]["kept"] == 3


def test_one_step_follows_the_surrogate_gradient():
    """One step = Adam on -[(1-a) g_path + a((1-b) g_node + b g_kernel)], g_path through the STE; the
    expected gradient comes from an independent, unscaled float64 path count."""
    model, names, masks = golden_mlp()
    base, zeros = scores_for(masks)
    sign = torch.where(torch.arange(base.numel()) % 3 == 0, -1.0, 1.0)
    s0 = base * sign
    alpha, beta, lr = 0.7, 0.4, 1.2  # a large step, so that the mask after it depends on every sign
    res = dpai_search(model, names, zeros, (3,), s0, alpha=alpha, beta=beta, lr=lr, steps=1)
    ms = [m.double().requires_grad_() for m in masks]
    paths = (ms[2] @ ms[1] @ ms[0] @ torch.ones(3, dtype=torch.float64)).sum()
    expected = []
    for g, m, sg in zip(torch.autograd.grad(paths.log(), ms), ms, sign.split([12, 12, 6])):
        g_path = g * sg.view_as(g).double()
        eff = (g_path.abs() * m.detach()) > 0
        g_node = g_path * (~eff.any(1, keepdim=True)).double()
        g_kernel = g_path * (~eff).double()
        expected.append((-((1 - alpha) * g_path + alpha * ((1 - beta) * g_node + beta * g_kernel))).reshape(-1))
    expected = torch.cat(expected).float()
    s1 = s0.clone().requires_grad_()
    s1.grad = expected
    torch.optim.Adam([s1], lr=lr).step()
    moved = s1.detach() - s0
    assert torch.allclose(moved, -lr * torch.sign(expected), atol=1e-4)  # first Adam step: lr * sign
    assert (expected == 0).any() and (expected > 0).any() and (expected < 0).any()
    keep = torch.cat([pk.sparsity.topk_mask(part.abs(), part.numel() - z)
                      for part, z in zip(s1.detach().split([12, 12, 6]), zeros)])
    assert torch.equal(res.keep, keep)
    assert not torch.equal(keep, torch.cat([m.reshape(-1) for m in masks]).bool())


def test_fast_search_equals_literal_implementation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    ms = pk.MaskSet.from_model(model)
    budgets = erk({n: tuple(m.shape) for n, m in ms.items()}, 0.9)
    zeros = [num_zeros(m.numel(), budgets[n]) for n, m in ms.items()]
    scores = initial_scores([m.numel() for m in ms.values()], torch.Generator().manual_seed(3))
    fast = dpai_search(model, ms.names(), zeros, (3, 8, 8), scores, steps=60, lr=0.05)
    masks, history = dpai_literal(model, ms.names(), zeros, (3, 8, 8), scores, steps=60, lr=0.05)
    assert all(torch.equal(a, b) for a, b in zip(fast.masks(), masks))
    assert torch.allclose(fast.history, torch.tensor(history, dtype=fast.history.dtype))
    assert not torch.equal(fast.keep, dpai_search(model, ms.names(), zeros, (3, 8, 8), scores, steps=0).keep)


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("kind", ["erk", "uniform", "global"])
def test_budgets_are_exact(kind):
    model = mlp()
    pruner = pk.create("dpai", model, sparsity=0.9, steps=20, seed=0, allocation=kind, input_shape=[16])
    assert pk.create("dpai", mlp()).config.allocation == "erk"
    pruner.prune()
    shapes = {n: tuple(m.shape) for n, m in pruner.masks.items()}
    if kind == "global":
        assert pruner.masks.nnz() == num_keep(pruner.masks.numel(), 0.9)
        return
    budgets = erk(shapes, 0.9) if kind == "erk" else dict.fromkeys(shapes, 0.9)
    assert len(set(budgets.values())) > 1 or kind == "uniform"
    for n, stats in pruner.masks.per_layer().items():
        assert stats["nnz"] == num_keep(stats["numel"], budgets[n])
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p[~m]) == 0


def test_random_ablation_is_topk_of_initial_scores_and_search_improves_paths():
    model = mlp()
    rnd = pk.create("dpai", model, sparsity=0.95, seed=4, optimize=False, input_shape=[16])
    rnd.prune()
    scores = initial_scores([m.numel() for m in rnd.masks.values()], torch.Generator().manual_seed(4))
    budgets = erk({n: tuple(m.shape) for n, m in rnd.masks.items()}, 0.95)
    for (n, m), part in zip(rnd.masks.items(), scores.split([m.numel() for m in rnd.masks.values()])):
        assert torch.equal(m.reshape(-1), pk.sparsity.topk_mask(part.abs(), num_keep(m.numel(), budgets[n])))
    opt = pk.create("dpai", mlp(), sparsity=0.95, seed=4, steps=300, alpha=0.0, lr=0.05, input_shape=[16])
    opt.prune()
    assert opt.search.final["log_paths"] > rnd.search.final["log_paths"] + 1.0


def test_alpha_one_raises_effective_nodes():
    base = pk.create("dpai", mlp(), sparsity=0.97, seed=1, optimize=False, input_shape=[16])
    base.prune()
    nodes = pk.create("dpai", mlp(), sparsity=0.97, seed=1, steps=300, alpha=1.0, beta=0.0, lr=0.05, input_shape=[16])
    nodes.prune()
    assert nodes.search.final["effective_nodes"] > base.search.final["effective_nodes"]


def test_no_effective_node_aborts_with_layer_collapse_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))  # 8 weights; global keeps 1: no path possible
    pruner = pk.create("dpai", model, sparsity=0.9, allocation="global", steps=5, input_shape=[2], seed=0)
    with pytest.raises(LayerCollapseError, match="no effective node"):
        pruner.prune()


@pytest.mark.parametrize("method", ["random", "magnitude", "granet", "lap", "bip"])
def test_every_method_takes_compression(method):
    """``compression`` is a setting of every method (one validator in MethodConfig), so a PaI grid in the
    DPaI unit can list baselines of any family."""
    assert pk.create(method, mlp(), compression=1.5).config.sparsity == pytest.approx(1 - 10 ** -1.5)


def test_compression_converts_and_conflicts_are_rejected():
    assert pk.create("dpai", mlp(), compression=2.0).config.sparsity == pytest.approx(0.99)
    assert pk.create("dpai", mlp(), compression=1.0, sparsity=0.9).config.sparsity == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="compression"):
        pk.create("dpai", mlp(), compression=1.0, sparsity=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        pk.create("dpai", mlp(), alpha=1.5)
    with pytest.raises(ConfigError, match="allocation"):
        pk.create("dpai", mlp(), allocation="er")
    with pytest.raises(ConfigError, match="input_shape"):
        pk.create("dpai", mlp(), sparsity=0.5, steps=1).prune()


def zoo_model(name):
    """A zoo model and its input shape; the ViT is the zoo's class at a small width (same layer types)."""
    if name == "vit_small_patch4":
        from prunekit.models.vit import VisionTransformer

        return VisionTransformer(16, 4, dim=32, depth=2, heads=2, mlp_dim=64, num_classes=10), (3, 16, 16)
    return pk.models.create(name), pk.models.info(name)["input_shape"]


@pytest.mark.parametrize("name", ["lenet5", "cifar_resnet20", "resnet20s", "vit_small_patch4"])
def test_runs_on_zoo_models(name):
    model, shape = zoo_model(name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = pk.create("dpai", model, sparsity=0.99, steps=2, seed=0, input_shape=list(shape), cpu_threads=1)
    pruner.prune()
    final = pruner.search.final
    assert math.isfinite(final["log_paths"]) and final["effective_nodes"] > 0
    budgets = erk({n: tuple(m.shape) for n, m in pruner.masks.items()}, 0.99)
    for n, stats in pruner.masks.per_layer().items():
        assert stats["nnz"] == num_keep(stats["numel"], budgets[n])
    params = dict(model.named_parameters())
    for n, p in before.items():  # path mode restored everything; only pruned weights changed
        expected = p * pruner.masks[n] if n in pruner.masks else p
        assert torch.equal(params[n].detach(), expected), n
    assert all("forward" not in m.__dict__ for m in model.modules())
