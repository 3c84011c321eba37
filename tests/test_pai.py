"""SNIP, GraSP, SynFlow, iterative SNIP (scorers and methods) and the diagnostics package."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.diagnostics import (check_layer_collapse, connectivity, effective_masks, invert_scores, log_paths,
                                  reinitialize_weights, shuffle_within_layers)
from prunekit.errors import ConfigError, LayerCollapseError
from prunekit.methods import PruneContext
from prunekit.methods.pai import round_sparsity
from prunekit.scoring import grasp_scores, hessian_gradient_product, snip_scores, synflow_scores
from tests.scoring_reference import grasp_literal, snip_literal, synflow_literal
from prunekit.sparsity import num_keep


def half_mse(out, t):
    return 0.5 * ((out.squeeze(1) - t) ** 2).sum()


def test_snip_golden_two_layer_linear():
    # y = W2 W1 x, L = (y - t)^2 / 2, x = [1, 1], t = 0:  h = W1 x = [3, -1], y = 8, dL/dy = 8
    # dL/dW2 = 8 h = [24, -8]                -> |W2 * g| = [72, 8]
    # dL/dW1 = 8 W2^T x^T = [[24, 24], [8, 8]] -> |W1 * g| = [[24, 48], [0, 8]];  total 160
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        model[1].weight.copy_(torch.tensor([[3.0, 1.0]]))
    masks = pk.MaskSet.from_model(model)
    s = snip_scores(model, masks, [(torch.ones(1, 2), torch.zeros(1))], half_mse)
    assert torch.allclose(s["0.weight"], torch.tensor([[24.0, 48.0], [0.0, 8.0]]) / 160)
    assert torch.allclose(s["1.weight"], torch.tensor([[72.0, 8.0]]) / 160)


def test_snip_sums_gradients_over_batches_before_abs():
    # w = [2, -1]; batch 1: x = [1, 3], y = -1 -> g = [-1, -3]; batch 2: x = [2, 2], y = 2 -> g = [4, 4]
    # summed g = [3, 1] -> |w g| = [6, 1] -> [6/7, 1/7]   (abs per batch would give [10/17, 7/17])
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, -1.0]]))
    batches = [(torch.tensor([[1.0, 3.0]]), torch.zeros(1)), (torch.tensor([[2.0, 2.0]]), torch.zeros(1))]
    s = snip_scores(model, pk.MaskSet.from_model(model), batches, half_mse)
    assert torch.allclose(s["weight"], torch.tensor([[6 / 7, 1 / 7]]))


def test_synflow_closed_form_two_layer():
    # R = 1^T |W2| (|W1| 1 + |b1|) + |b2| (ReLU is the identity on non-negative inputs), so
    # score1[j, i] = |W1[j, i]| sum_k |W2[k, j]|,  score2[k, j] = |W2[k, j]| (sum_i |W1[j, i]| + |b1[j]|)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    w1, b1, w2 = model[0].weight.detach().abs(), model[0].bias.detach().abs(), model[2].weight.detach().abs()
    before = [p.detach().clone() for p in model.parameters()]
    s = synflow_scores(model, pk.MaskSet.from_model(model), (3,))
    assert torch.allclose(s["0.weight"], w1 * w2.sum(0)[:, None])
    assert torch.allclose(s["2.weight"], w2 * (w1.sum(1) + b1)[None, :])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # signs untouched


def test_grasp_hessian_gradient_product_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    params = [model[0].weight, model[2].weight]
    batches = [(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))) for _ in range(2)]
    temp = 2.0

    def grad_sum():
        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            g = torch.autograd.grad(F.cross_entropy(model(x) / temp, y), params)
            total = [a + b for a, b in zip(total, g)]
        return total

    g = grad_sum()
    eps = 1e-4
    with torch.no_grad():
        for p, d in zip(params, g):
            p.add_(eps * d)
    plus = grad_sum()
    with torch.no_grad():
        for p, d in zip(params, g):
            p.sub_(2 * eps * d)
    minus = grad_sum()
    with torch.no_grad():
        for p, d in zip(params, g):
            p.add_(eps * d)
    fd = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
    for two_pass in (False, True):
        hg = hessian_gradient_product(model, params, batches, temperature=temp, two_pass=two_pass)
        for a, b in zip(hg, fd):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)


class _Branchy(nn.Module):
    """Stride 2, groups, a biased conv feeding BatchNorm, an unfolded BatchNorm (two users) and a skip."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, padding=1, bias=True)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.skip = nn.Conv2d(8, 8, 1, stride=2, bias=False)
        self.c3 = nn.Conv2d(8, 4, 3, padding=2, dilation=2, bias=False)
        self.b3 = nn.BatchNorm2d(4, affine=False)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        c2 = self.c2(h)
        h = torch.relu(self.b2(c2) + self.skip(h) + 0.1 * c2)  # c2 has two users: not folded
        h = torch.tanh(self.b3(self.c3(h)))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("train", [False, True])
def test_fused_second_order_equals_autograd_double_backward(train):
    """The fused Hessian-gradient product (plain-kernel conv double backward, eval BatchNorm folded) equals
    PyTorch's own double backward in float64, and the model comes out untouched."""
    from prunekit.scoring.second_order import _conv_bn_pairs

    torch.manual_seed(0)
    model = _Branchy().double()
    for bn in (model.b1, model.b2, model.b3):  # non-trivial running statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.affine:
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
    model.train(train)
    assert _conv_bn_pairs(model) == ({} if train else {"c1": "b1", "c3": "b3"})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masks = pk.MaskSet.from_model(model)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 2, 9, 9, generator=g, dtype=torch.float64), torch.randint(0, 5, (6,), generator=g))
               for _ in range(2)]
    hg, after = {}, {}
    for mode in ("autograd", "fused"):
        model.load_state_dict(state)
        hg[mode] = hessian_gradient_product(model, masks.params, batches, temperature=3.0, second_order=mode)
        after[mode] = {k: v.clone() for k, v in model.state_dict().items()}
    for a, b in zip(hg["autograd"], hg["fused"]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    # eval: nothing changes; train: both update the running statistics alike
    for k, v in after["fused"].items():
        assert torch.allclose(v, after["autograd"][k], rtol=1e-12, atol=0) and (train or torch.equal(v, state[k]))
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_fused_grasp_masks_equal_autograd_masks_on_resnet20():
    torch.manual_seed(0)
    model = pk.models.create("cifar_resnet20", num_classes=10).double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g))]
    masks = {}
    for mode in ("autograd", "fused"):
        model.load_state_dict(state)
        masks[mode] = pk.create("grasp", model, sparsity=0.95, second_order=mode).prune(PruneContext(batches=batches))
    assert masks["fused"].nnz() == num_keep(masks["fused"].numel(), 0.95)
    assert all(torch.equal(masks["fused"][n], masks["autograd"][n]) for n in masks["fused"].names())


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))


def data(n=3, bs=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 8, 8, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


def test_fast_scorers_equal_literal_implementations():
    torch.manual_seed(0)
    model = small_cnn().eval()
    masks = pk.MaskSet.from_model(model)
    batches = data()
    for fast, slow in [(snip_scores(model, masks, batches), snip_literal(model, masks, batches)),
                       (grasp_scores(model, masks, batches), grasp_literal(model, masks, batches))]:
        for n in fast:
            assert torch.allclose(fast[n], slow[n], rtol=1e-4, atol=1e-9), n
    pruner = pk.create("synflow", model, sparsity=0.9, rounds=20, input_shape=[1, 8, 8])
    literal = synflow_literal(model, pruner.masks, (1, 8, 8), 0.9, rounds=20)
    pruner.prune()
    assert all(torch.equal(pruner.masks[n], literal[n]) for n in literal)


@pytest.mark.parametrize("name", ["snip", "grasp"])
def test_global_selection_keeps_the_highest_scores(name):
    torch.manual_seed(0)
    model = small_cnn()
    batches = data(n=1, bs=100)
    ref = small_cnn()
    ref.load_state_dict(model.state_dict())
    ref.eval()
    fn = snip_scores if name == "snip" else grasp_scores
    scores = fn(ref, pk.MaskSet.from_model(ref), batches)
    pruner = pk.create(name, model, sparsity=0.8)
    pruner.prune(PruneContext(batches=batches))
    kept = torch.cat([scores[n][m] for n, m in pruner.masks.items()])
    dropped = torch.cat([scores[n][~m] for n, m in pruner.masks.items()])
    assert kept.min() >= dropped.max()
    assert pruner.masks.nnz() == num_keep(pruner.masks.numel(), 0.8)
    inverted = pk.create(name, ref, sparsity=0.8, invert=True)
    inverted.prune(PruneContext(batches=batches))
    kept = torch.cat([scores[n][m] for n, m in inverted.masks.items()])
    dropped = torch.cat([scores[n][~m] for n, m in inverted.masks.items()])
    assert kept.max() <= dropped.min()


def test_snip_uses_ten_samples_per_class_by_default():
    torch.manual_seed(0)
    model = small_cnn()
    batches = data(n=5, bs=32)  # 160 samples available, 10 classes -> the first 100 are scored
    ref_model = small_cnn()
    ref_model.load_state_dict(model.state_dict())
    used = batches[:3] + [(batches[3][0][:4], batches[3][1][:4])]
    ref = snip_scores(ref_model.eval(), pk.MaskSet.from_model(ref_model), used)
    expected = pk.sparsity.select(ref, sparsity=0.5, allocation="global")
    pruner = pk.create("snip", model, sparsity=0.5)
    pruner.prune(PruneContext(batches=batches))
    assert all(torch.equal(pruner.masks[n], expected[n]) for n in expected)
    assert model.training  # scoring ran in eval mode and restored the flag
    with pytest.raises(ConfigError, match="needs data"):
        pk.create("snip", small_cnn(), sparsity=0.5).prune(PruneContext())


def test_round_schedule_is_exponential_and_ends_exactly():
    assert round_sparsity(0.99, 100, 100, "exponential") == 0.99
    assert round_sparsity(0.99, 50, 100, "exponential") == pytest.approx(0.9)
    assert round_sparsity(0.9, 1, 4, "linear") == pytest.approx(0.225)


def test_iterative_snip_never_revives_and_is_exact():
    torch.manual_seed(0)
    model = small_cnn()
    pruner = pk.create("iter_snip", model, sparsity=0.95, rounds=5, allocation="global")
    seen = []
    original = pruner.masks.update_

    def spy(new):
        seen.append({n: m.clone() for n, m in new.items()})
        return original(new)

    pruner.masks.update_ = spy
    pruner.prune(PruneContext(batches=data()))
    assert pruner.masks.nnz() == num_keep(pruner.masks.numel(), 0.95)
    assert len(seen) == 5
    for before, after in zip(seen, seen[1:]):
        assert all(not (after[n] & ~before[n]).any() for n in before)


def test_compression_setting_and_controls():
    torch.manual_seed(0)
    model = small_cnn()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = pk.create("synflow", model, compression=1.0, rounds=10, shuffle=True, seed=3)
    assert pruner.config.sparsity == pytest.approx(0.9)
    plain = pk.create("synflow", small_cnn(), compression=1.0, rounds=10)
    plain.model.load_state_dict({n: w for n, w in weights.items()}, strict=False)
    pruner.prune(PruneContext(batches=data(1)))
    plain.prune(PruneContext(batches=data(1)))
    for n, m in pruner.masks.items():
        assert int(m.sum()) == int(plain.masks[n].sum())  # shuffle keeps per-layer counts
    assert any(not torch.equal(m, plain.masks[n]) for n, m in pruner.masks.items())


def test_controls_shuffle_reinitialize_invert():
    torch.manual_seed(0)
    model = small_cnn()
    masks = pk.MaskSet.from_model(model)
    masks.update_({n: torch.rand(m.shape) < 0.3 for n, m in masks.items()})
    counts = {n: int(m.sum()) for n, m in masks.items()}
    old = {n: m.clone() for n, m in masks.items()}
    shuffle_within_layers(masks, torch.Generator().manual_seed(0))
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    assert any(not torch.equal(m, old[n]) for n, m in masks.items())
    masks.apply_()
    before = [p.detach().clone() for p in masks.params]
    reinitialize_weights(model, masks, generator=torch.Generator().manual_seed(1))
    for p, b, m in zip(masks.params, before, masks.values()):
        assert not torch.equal(p, b) and torch.count_nonzero(p[~m]) == 0
    from prunekit.models import init as winit
    reinitialize_weights(model, masks, init=lambda mdl: winit.kaiming_normal_fan_in(mdl, True),
                         generator=torch.Generator().manual_seed(2))
    assert all(torch.count_nonzero(p[~m]) == 0 for p, m in zip(masks.params, masks.values()))
    s = {"a": torch.tensor([1.0, -2.0, 3.0])}
    assert torch.equal(invert_scores(s)["a"].argsort(), s["a"].argsort(descending=True))
    assert torch.allclose(invert_scores({"a": torch.tensor([2.0, 4.0])}, "reciprocal")["a"], torch.tensor([0.5, 0.25]))


def test_effective_sparsity_counts_dead_ends_and_max_pooling():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 2))
    masks = pk.MaskSet.from_model(model)
    conv = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    conv[0, 0, 1, 1] = True  # one weight feeds channel 0; channel 1 has no input
    fc = torch.zeros(2, 32, dtype=torch.bool)
    fc[0, :16] = True  # reads channel 0 (features 0..15)
    fc[1, 16:20] = True  # reads channel 1 only: unreachable
    masks.update_({"0.weight": conv, "4.weight": fc})
    eff = effective_masks(model, masks, (1, 8, 8))
    assert int(eff["0.weight"].sum()) == 1 and torch.equal(eff["4.weight"], fc & (torch.arange(32) < 16))
    c = connectivity(model, masks, (1, 8, 8))
    assert c.effective == 17 and c.kept == 21
    # 16 pooled outputs of channel 0, each reached by max-pooling from 4 conv outputs holding one path
    assert c.log_paths == pytest.approx(math.log(16))
    assert log_paths(model, masks, (1, 8, 8)) == pytest.approx(math.log(16))


def test_layer_collapse_warns_or_raises():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = pk.MaskSet.from_model(model)
    assert check_layer_collapse(model, masks, (4,)) == []
    masks.set_("2.weight", torch.zeros(4, 4, dtype=torch.bool))
    with pytest.warns(RuntimeWarning, match="layer collapse"):
        collapsed = check_layer_collapse(model, masks, (4,))
    assert collapsed == ["0.weight", "2.weight", "4.weight"]
    with pytest.raises(LayerCollapseError, match="no input->output path"):
        check_layer_collapse(model, masks, (4,), raise_error=True)
    assert connectivity(model, masks, (4,)).log_paths == -math.inf


@pytest.mark.parametrize("name", ["lenet5", "vgg11_bn_lap", "vit_small_patch4"])
def test_diagnostics_on_zoo_models(name):
    torch.manual_seed(0)
    from tests.test_dpai import zoo_model

    model, shape = zoo_model(name)
    masks = pk.MaskSet.from_model(model)
    masks.update_({n: torch.rand(m.shape) < 0.05 for n, m in masks.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = connectivity(model, masks, shape)
    assert 0 < c.effective <= c.kept and c.effective_sparsity >= c.sparsity
    assert math.isfinite(c.log_paths) and c.log_paths > 0
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_prospr_meta_gradient_matches_finite_differences_and_reduces_to_snip():
    from prunekit.scoring.prospr import prospr_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    masks = pk.MaskSet.from_model(model)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    snip = snip_scores(model, masks, [(x, y)], normalize=False)
    zero = prospr_scores(model, masks, x, y, steps=0)
    assert all(torch.allclose(zero[n], snip[n]) for n in snip)

    def loss_after_steps(gates, steps=2, lr=0.3):
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n, c in gates.items():
            params[n] = params[n] * c
        for _ in range(steps):
            params = {n: p.requires_grad_() if not p.requires_grad else p for n, p in params.items()}
            loss = F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - lr * g).detach() for (n, p), g in zip(params.items(), grads)}
        return float(F.cross_entropy(torch.func.functional_call(model, params, (x,)), y))

    meta = prospr_scores(model, masks, x, y, steps=2, lr=0.3)
    eps = 1e-6
    for n, idx in [("0.weight", (1, 2)), ("2.weight", (0, 4)), ("2.weight", (2, 1))]:
        plus = {k: torch.ones_like(m, dtype=torch.float64) for k, m in masks.items()}
        minus = {k: v.clone() for k, v in plus.items()}
        plus[n][idx] += eps
        minus[n][idx] -= eps
        fd = (loss_after_steps(plus) - loss_after_steps(minus)) / (2 * eps)
        assert meta[n][idx].item() == pytest.approx(abs(fd), rel=1e-5, abs=1e-9)
    assert not all(torch.allclose(meta[n], zero[n]) for n in meta)


def test_prospr_method_is_exact_and_leaves_buffers_alone():
    torch.manual_seed(0)
    model = small_cnn()
    running = model[1].running_mean.clone()
    pruner = pk.create("prospr", model, sparsity=0.9)
    pruner.prune(PruneContext(batches=data(n=2, bs=64)))
    assert pruner.masks.nnz() == num_keep(pruner.masks.numel(), 0.9)
    assert torch.equal(model[1].running_mean, running)


def test_segment_topk_matches_topk_mask_with_ties_signs_and_float64():
    from prunekit.sparsity.topk import SegmentTopK
    from prunekit.sparsity import topk_mask

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(-3, 4, (50,), generator=g).float()  # many ties, negative values
    scores[[3, 7]] = -torch.inf
    scores[[5, 9]] = -0.0
    sizes, keep = [20, 30], [7, 12]
    for dtype in (torch.float32, torch.float64):
        got = SegmentTopK(sizes, "cpu")(scores.to(dtype), keep)
        want = torch.cat([topk_mask(p, k) for p, k in zip(scores.to(dtype).split(sizes), keep)])
        assert torch.equal(got, want)
    assert torch.equal(SegmentTopK([50], "cpu")(scores, [0]), torch.zeros(50, dtype=torch.bool))



def test_segment_topk_active_ranks_inactive_last_like_minus_inf():
    """The nonnegative fast path (unique int64 keys) and the generic -inf fill select the same entries,
    also when ``k`` exceeds the number of active entries (then inactive ones are kept, lowest index first)."""
    from prunekit.sparsity.topk import SegmentTopK
    from prunekit.sparsity import topk_mask

    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (4000,), generator=g).float()  # ties among active and inactive entries
    active = torch.rand(4000, generator=g) < 0.1
    scores[~active] = 0.0
    n_active = int(active.sum())
    for k in (0, 1, n_active // 2, n_active, n_active + 7, 4000):
        want = topk_mask(scores.masked_fill(~active, -torch.inf), k)
        fast = SegmentTopK([4000], "cpu")(scores, [k], nonnegative=True, active=active).clone()
        generic = SegmentTopK([4000], "cpu")(scores, [k], nonnegative=False, active=active).clone()
        assert int(fast.sum()) == k
        assert torch.equal(fast, want) and torch.equal(generic, want)

def test_scorer_registry_signature():
    from prunekit.scoring import SCORERS

    torch.manual_seed(0)
    model = small_cnn().eval()
    masks = pk.MaskSet.from_model(model)
    ctx = PruneContext(batches=data(n=2, bs=16))
    for name, scorer in SCORERS.items():
        scores = scorer(model, masks, ctx)
        assert list(scores) == masks.names(), name
        assert all(s.shape == m.shape and torch.isfinite(s).all() for s, m in zip(scores.values(), masks.values()))


@pytest.mark.parametrize("settings", [{"dtype": "float64"}, {"train_mode": True}, {"allocation": "erk"},
                                      {"invert": True}])
def test_synflow_options_keep_exact_counts(settings):
    torch.manual_seed(0)
    pruner = pk.create("synflow", small_cnn(), sparsity=0.9, rounds=5, **settings)
    pruner.prune(PruneContext(batches=data(1)))
    if pruner.config.allocation == "global":
        assert pruner.masks.nnz() == num_keep(pruner.masks.numel(), 0.9)
    else:
        budgets = pk.sparsity.erk({n: tuple(m.shape) for n, m in pruner.masks.items()}, 0.9)
        assert all(s["nnz"] == num_keep(s["numel"], budgets[n]) for n, s in pruner.masks.per_layer().items())
