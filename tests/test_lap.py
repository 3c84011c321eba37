"""LAP and its variants (Park et al., ICLR 2020): hand-computed goldens, the reference's sparsity grid,
sequential modes, budgets, data-dependent variants and an end-to-end run on real MNIST."""
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.methods import PruneContext
from prunekit.models import create as create_model
from prunekit.scoring import lap as S


def linear(*rows):
    layer = nn.Linear(len(rows[0]), len(rows), bias=False)
    layer.weight.data = torch.tensor(rows, dtype=torch.float32)
    return layer


def close(got, want):
    return torch.allclose(got.double(), torch.as_tensor(want, dtype=torch.float64))


def nnz(pruner):
    return [int(m.sum()) for m in pruner.masks.values()]


# --- goldens -----------------------------------------------------------------------------------------
def test_single_layer_lap_equals_mp():
    torch.manual_seed(3)
    a, b = nn.Linear(20, 10), nn.Linear(20, 10)
    b.load_state_dict(a.state_dict())
    lap, mp = pk.create("lap", a, rates=[0.5], round=2), pk.create("mp", b, rates=[0.5], round=2)
    lap.prune(), mp.prune()
    assert torch.equal(lap.masks["weight"], mp.masks["weight"]) and nnz(lap) == [50]


def test_three_layer_mlp_scores_by_hand():
    w1, w2, w3 = [[1.0, 2.0], [3.0, 0.5]], [[2.0, 1.0], [0.0, 4.0]], [[1.0, 3.0]]
    # layer 1: no previous layer; next = squared column norms of W2 = [2²+0², 1²+4²] = [4, 17]
    #   L1² = W1² * next[j] = [[1*4, 4*4], [9*17, 0.25*17]]
    # layer 2: prev = squared row norms of W1 = [1+4, 9+0.25] = [5, 9.25]; next = W3 columns² = [1, 9]
    #   L2²[j,k] = W2²[j,k] * prev[k] * next[j] = [[4*5*1, 1*9.25*1], [0, 16*9.25*9]]
    # layer 3: prev = squared row norms of W2 = [4+1, 0+16] = [5, 16]; no next layer
    expected = [[[4.0, 16.0], [153.0, 4.25]], [[20.0, 9.25], [0.0, 1332.0]], [[5.0, 144.0]]]
    scores = S.lap_scores([torch.tensor(w) for w in (w1, w2, w3)])
    for got, want in zip(scores, expected):
        assert close(got, want)
    # the paper's unsquared score |W2[1,1]| * ||W1[1,:]|| * ||W3[:,1]|| = 4 * sqrt(9.25) * 3
    assert math.isclose(scores[1][1, 1].sqrt().item(), 4 * math.sqrt(9.25) * 3, rel_tol=1e-6)
    # and the method keeps the top scores of each layer: keep round(0.5 * 4) = 2 of layer 2
    model = nn.Sequential(linear(*w1), nn.ReLU(), linear(*w2), nn.ReLU(), linear(*w3))
    pruner = pk.create("lap", model, rates=[0.5, 0.5, 0.5], round=1)
    pruner.prune()
    assert pruner.masks["2.weight"].tolist() == [[True, False], [False, True]]
    assert pruner.masks["0.weight"].tolist() == [[False, True], [True, False]]


def conv_linear_net():
    conv = nn.Conv2d(1, 2, kernel_size=(1, 2), bias=False)
    conv.weight.data = torch.tensor([[1.0, 2.0], [0.5, 3.0]]).view(2, 1, 1, 2)
    fc = linear([1.0, 2.0, 3.0, 4.0])
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc)  # input 1x1x3 -> 2 channels x 2 positions


@pytest.mark.parametrize("lookahead", ["chain", "residual"])
def test_conv_to_linear_flatten_by_hand(lookahead):
    model = conv_linear_net()
    assert model(torch.ones(1, 1, 1, 3)).shape == (1, 1)
    # flatten order is channel-major: fc inputs are [c0p0, c0p1, c1p0, c1p1]
    # conv: next per channel = sum of the fc column norms of its 2 positions = [1+4, 9+16] = [5, 25]
    #   L² = W_c² * next[c] = [[1*5, 4*5], [0.25*25, 9*25]]
    # fc: prev = conv row norms [1+4, 0.25+9] = [5, 9.25] repeated per position -> [5, 5, 9.25, 9.25]
    #   L² = W_fc² * prev = [1*5, 4*5, 9*9.25, 16*9.25]
    pruner = pk.create("lap", model, sparsity=0.5, lookahead=lookahead)
    from prunekit.methods.lap import build_scorer

    scorer = build_scorer(pruner, None)
    assert close(scorer.score(0).flatten(), [5.0, 20.0, 6.25, 225.0])
    assert close(scorer.score(1).flatten(), [5.0, 20.0, 83.25, 148.0])


def test_lap_bn_factors_by_hand():
    bn = nn.BatchNorm1d(2)
    bn.weight.data, bn.running_var.data = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 4.0])
    model = nn.Sequential(linear([1.0, 2.0], [3.0, 4.0]), bn, nn.ReLU(), linear([1.0, 1.0]))
    # b = gamma / sqrt(var + 1e-10) = [2, 0.5]; layer 1: W1² * next[j] * b[j]², next = [1, 1]
    # layer 2: prev = row norms of W1 [5, 25] * b² = [20, 6.25]
    for lookahead in ("chain", "residual"):
        pruner = pk.create("lap_bn", model, sparsity=0.5, lookahead=lookahead)
        from prunekit.methods.lap import build_scorer

        scorer = build_scorer(pruner, None)
        assert close(scorer.score(0), [[4.0, 16.0], [2.25, 4.0]])
        assert close(scorer.score(1), [[20.0, 6.25]])


def test_reference_bn_quirk_and_residual_neighbours_on_resnet18():
    model = create_model("resnet18_lap")
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(1.0 + i)
    names = [n.rsplit(".", 1)[0] for n in pk.MaskSet.from_model(model, "lap").names()]
    factors = S.reference_bn_factors(model, names)
    # the reference's list logic gives layer2.0.conv2 the factor of the projection shortcut's BN
    assert torch.equal(factors[names.index("layer2.0.conv2")], S.bn_factor(model.layer2[0].shortcut[1]))
    assert torch.equal(factors[names.index("layer1.0.conv2")], S.bn_factor(model.layer1[0].bn2))
    prev, nxt = S.residual_neighbours(model, names)

    def show(nbs):
        return [("identity" if nb.source is None else names[nb.source] if isinstance(nb.source, int)
                 else "shortcut", len(nb.bn)) for nb in nbs]
    i = names.index
    assert show(prev[i("layer2.0.conv1")]) == [("layer1.1.conv2", 1), ("identity", 0)]
    assert show(nxt[i("layer1.1.conv2")]) == [("layer2.0.conv1", 1), ("shortcut", 1)]
    assert show(prev[i("layer2.1.conv1")]) == [("layer2.0.conv2", 1), ("shortcut", 1)]
    assert show(nxt[i("conv1")]) == [("layer1.0.conv1", 1), ("identity", 1)]
    assert show(prev[i("fc")]) == [("layer4.1.conv2", 1), ("identity", 0)]


@pytest.mark.parametrize("name", ["conv6", "vgg11_bn_lap"])
def test_residual_lookahead_equals_chain_without_skips(name):
    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0)
            m.running_var.uniform_(0.5, 2.0)
    from prunekit.methods.lap import build_scorer

    chain = build_scorer(pk.create("lap_bn", model, sparsity=0.5), None)
    graph = build_scorer(pk.create("lap_bn", model, sparsity=0.5, lookahead="residual"), None)
    for i in range(len(chain.sq)):
        assert torch.allclose(chain.score(i), graph.score(i), rtol=1e-12)


class TinyResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv1, self.conv2 = (nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 2, 1, bias=False),
                                             nn.Conv2d(2, 2, 1, bias=False))
        self.fc = nn.Linear(2, 1, bias=False)
        for m, w in ((self.stem, [[1.0], [2.0]]), (self.conv1, [[1.0, 2.0], [0.0, 1.0]]),
                     (self.conv2, [[3.0, 0.0], [1.0, 1.0]]), (self.fc, [[1.0, 2.0]])):
            m.weight.data = torch.tensor(w).view_as(m.weight)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv2(torch.relu(self.conv1(h))) + h)
        return self.fc(h.mean(dim=(2, 3)))


def test_residual_lookahead_adds_identity_by_hand():
    pruner = pk.create("lap", TinyResidual(), sparsity=0.5, lookahead="residual")
    from prunekit.methods.lap import build_scorer

    scorer = build_scorer(pruner, None)
    # fc's input unit k = relu(conv2 row k + skip): prev = ||W_conv2[k,:]||² + 1 = [9+1, 2+1]
    assert scorer.prev_factor(3).tolist() == [10.0, 3.0]
    # the stem feeds conv1 and the skip: next = ||W_conv1[:,j]||² + 1 = [1+1, 4+1+1]
    assert scorer.next_factor(0).tolist() == [2.0, 6.0]
    # conv2's output goes through the add to fc: next = fc column norms [1, 4] (no second skip)
    assert scorer.next_factor(2).tolist() == [1.0, 4.0]
    chain = build_scorer(pk.create("lap", TinyResidual(), sparsity=0.5), None)
    assert chain.prev_factor(3).tolist() == [9.0, 2.0]


# --- the reference's sparsity grid -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mp", "lap", "lap_forward"])
def test_fcn_sparsity_grid_rounds_4_to_10(method):
    torch.manual_seed(0)
    dense = create_model("fcn")
    expected = {4: 6.36, 5: 3.21, 6: 1.63, 7: 0.84, 8: 0.43, 9: 0.23, 10: 0.12}
    for t, remaining in expected.items():
        model = create_model("fcn")
        model.load_state_dict(dense.state_dict())
        pruner = pk.create(method, model, rates="fcn", round=t)
        pruner.prune()
        nonzero = sum(int(torch.count_nonzero(p)) for p in pruner.masks.params)
        assert round(100 * nonzero / 1_147_000, 2) == remaining
        assert 1 - nonzero / 1_147_000 == pytest.approx(pruner.target_sparsity(), abs=1e-12)


def test_exact_kept_counts_and_determinism_on_conv6():
    rates = [0.15] * 6 + [0.2, 0.2, 0.1]
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        pruner = pk.create("lap", create_model("conv6"), rates="conv6", round=3)
        pruner.prune()
        want = [round((1 - (1.0 - (1.0 - r) ** 3)) * m.numel()) for r, m in zip(rates, pruner.masks.values())]
        assert nnz(pruner) == want
        assert [int(torch.count_nonzero(p)) for p in pruner.masks.params] == want
        runs.append([m.clone() for m in pruner.masks.values()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("method", ["mp", "rp", "lap", "lap_bn", "lap_forward", "lap_backward", "mp_global",
                                    "lap_global"])
def test_pruned_weights_stay_zero_while_training(method):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    pruner = pk.create(method, model, sparsity=0.7)
    pruner.prune()
    opt = pruner.wrap(torch.optim.Adam(model.parameters(), lr=1e-2))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(6, 3, 8, 8)), torch.randint(0, 10, (6,))).backward()
        opt.step()
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p[~m]) == 0 and torch.count_nonzero(p[m]) == int(m.sum())


# --- sequential modes --------------------------------------------------------------------------------
def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(),
                         nn.Linear(8, 3, bias=False))


def test_forward_mode_sees_pruned_previous_layer():
    base, fwd = pk.create("lap", mlp(0), rates=[0.7] * 3, round=1), pk.create("lap_forward", mlp(0), rates=[0.7] * 3,
                                                                             round=1)
    w = [p.detach().clone() for p in base.masks.params]
    base.prune(), fwd.prune()
    m1 = fwd.masks["0.weight"]
    assert torch.equal(m1, base.masks["0.weight"])  # the first layer has nothing pruned before it
    # layer 2 of the forward mode = LAP on (pruned W1, W2, W3); the base mode uses the dense W1
    want = S.lap_scores([w[0] * m1, w[1], w[2]])[1]
    from prunekit.sparsity import topk_mask

    assert torch.equal(fwd.masks["2.weight"], topk_mask(want, 19))
    assert not torch.equal(fwd.masks["2.weight"], base.masks["2.weight"])


def test_backward_mode_sees_pruned_next_layer():
    bwd = pk.create("lap_backward", mlp(0), rates=[0.7] * 3, round=1)
    w = [p.detach().clone() for p in bwd.masks.params]
    bwd.prune()
    want = S.lap_scores([w[0], w[1], w[2] * bwd.masks["4.weight"]])[1]
    from prunekit.sparsity import topk_mask

    assert torch.equal(bwd.masks["2.weight"], topk_mask(want, 19))


# --- budgets and configuration -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fcn", "lenet5", "conv6", "vgg11_bn_lap", "vgg16_bn_lap", "vgg19_bn_lap",
                                  "resnet18_lap", "resnet50_lap", "wrn16_8"])
def test_every_rate_table_fits_its_model(name):
    """Each reference network's table has one rate per prunable layer of the prunekit model (1x1 projection
    shortcuts stay dense), and the ResNets' first conv is never pruned."""
    model = create_model(name)
    pruner = pk.create("mp", model, rates=name, round=3)
    pruner.prune(PruneContext())
    first = pruner.masks.names()[0]
    assert ("resnet" in name or "wrn" in name) == bool(pruner.masks[first].all())
    assert not any("shortcut" in n for n in pruner.masks.names())
    assert pruner.masks.sparsity() == pytest.approx(pruner.target_sparsity(), abs=1e-6)


def test_vgg19_rounds_leave_the_reference_percentages():
    """methods.md §4a: VGG-19 (20,024,000 weights) rounds 1, 2, 14, 18, 24, 28, 30 leave 85.00, 72.25, 10.28,
    5.37, 2.02, 1.06, 0.76 % of the weights."""
    model = create_model("vgg19_bn_lap")
    remaining = [round(100 * (1 - pk.create("lap", model, rates="vgg19", round=t).target_sparsity()), 2)
                 for t in (1, 2, 14, 18, 24, 28, 30)]
    assert remaining == [85.0, 72.25, 10.28, 5.37, 2.02, 1.06, 0.76]


def test_sparsity_selects_round_and_contradictions_are_errors():
    fcn = create_model("fcn")
    assert pk.create("lap", fcn, rates="fcn", sparsity=0.9364).round == 4
    assert pk.create("mp", fcn, rates="fcn", round=7, sparsity=0.9916).target_sparsity() == pytest.approx(0.99164, 1e-5)
    with pytest.raises(ConfigError, match="contradicts"):
        pk.create("lap", fcn, rates="fcn", round=4, sparsity=0.95)
    with pytest.raises(ConfigError, match="not reached"):
        pk.create("lap", fcn, rates="fcn", sparsity=0.95)
    with pytest.raises(ConfigError, match="need rates"):
        pk.create("lap", fcn, round=3, sparsity=0.9)
    with pytest.raises(ConfigError, match="5 layer rates for 3"):
        pk.create("lap", mlp(0), rates="fcn", round=1)
    with pytest.raises(ConfigError, match="did you mean"):
        pk.create("lap", fcn, rates="fcnn", round=1)


def test_iterative_rounds_inside_finetuning_reset_adam():
    model = mlp(2)
    pruner = pk.create("lap", model, rates=[0.5, 0.5, 0.5], round=3, pruning="iterative", retrain_steps=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.attach(opt)
    pruner.prune()
    counts = [nnz(pruner)]
    for step in range(1, 7):
        pruner.before_step(step)
        if step in (3, 5):
            counts.append(nnz(pruner))
            assert not opt.state  # a fresh Adam for every retraining
        opt.zero_grad()
        model(torch.randn(5, 6)).sum().backward()
        opt.step()
        pruner.after_optimizer_step(step)
    assert counts == [[24, 32, 12], [12, 16, 6], [6, 8, 3]]
    assert pruner.rounds_done == 3 and pruner.masks.sparsity() == pytest.approx(pruner.target_sparsity())


def test_iterative_rounds_in_the_runner(tmp_path):
    import json

    from prunekit.experiments import build_config, run_experiment

    cfg = build_config({
        "model": {"name": "mlp"}, "data": {"name": "sklearn_digits", "batch_size": 32, "augment": False},
        "train": {"duration": "20it", "optimizer": "adam", "lr": 0.01, "random_batches": True},
        "finetune": {"duration": "15it", "optimizer": "adam", "lr": 0.01, "random_batches": True, "eval_every": 5},
        "method": {"name": "mp", "rates": [0.5, 0.5, 0.5], "round": 3, "pruning": "iterative",
                   "retrain_steps": 5},
        "output": {"root": str(tmp_path), "save_model": False}})
    row = run_experiment(cfg)
    metrics = next(tmp_path.glob("*/*/metrics-finetune.jsonl"))
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    # 64-256-128-10 weights: round k keeps round(0.5 * survivors) per layer
    kept = [[8192, 16384, 640], [4096, 8192, 320], [2048, 4096, 160]]
    assert [round(1 - r["sparsity"], 6) for r in lines] == [round(sum(k) / 50432, 6) for k in kept]
    assert row["achieved_sparsity"] == pytest.approx(1 - 6304 / 50432)
    with pytest.raises(ConfigError, match="need a fine-tuning phase"):
        run_experiment(build_config({**cfg.model_dump(), "finetune": {**cfg.finetune.model_dump(),
                                                                      "duration": "10it"}}))


def test_global_levels_and_normalization():
    fcn = create_model("fcn")
    pruner = pk.create("mp_global", fcn, levels="fcn", level=1)
    pruner.prune()
    assert pruner.masks.nnz() == round((1 - 0.9364) * 1_147_000)  # reference counting: 72949
    model = nn.Sequential(linear([1.0, 2.0], [3.0, 4.0]), linear([10.0, 40.0]))
    pruner = pk.create("mp_global", model, sparsity=0.5)
    pruner.prune()
    # |w| / ||w||_F: layer 1 [1,2,3,4]/sqrt(30) = [.18,.37,.55,.73]; layer 2 [10,40]/sqrt(1700) = [.24,.97]
    assert pruner.masks["0.weight"].tolist() == [[False, False], [True, True]]
    assert pruner.masks["1.weight"].tolist() == [[False, True]]
    lap = pk.create("lap_global", mlp(0), sparsity=0.8)
    scores = S.lap_scores(list(lap.masks.params))
    flat = torch.cat([(s / s.norm()).flatten() for s in scores])
    lap.prune()
    kept = torch.cat([m.flatten() for m in lap.masks.values()])
    assert int(kept.sum()) == 136 - int(0.8 * 136) and flat[kept].min() >= flat[~kept].max()
    with pytest.raises(ConfigError, match="contradicts"):
        pk.create("lap_global", fcn, levels="fcn", level=2, sparsity=0.9364)


# --- data-dependent variants -------------------------------------------------------------------------
def test_activation_rates_and_lap_act():
    model = nn.Sequential(linear([1.0], [-1.0]), nn.ReLU(), linear([1.0, 2.0]))
    x = torch.tensor([[1.0], [1.0], [-1.0], [1.0]])
    batches = [(x[:2], torch.zeros(2, dtype=torch.long)), (x[2:], torch.zeros(2, dtype=torch.long))]
    scales = S.activation_scales(model, [model[0], None], batches, None)
    assert torch.allclose(scales[0], torch.tensor([0.75, 0.25]).sqrt()) and scales[1] is None
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(1.0)
    img = torch.tensor([[1.0, -1.0], [1.0, 1.0]]).view(2, 1, 1, 2)  # position rates [1, 0.5]
    got = S.activation_scales(conv, [conv], [(img, torch.zeros(2))], None)[0]
    assert torch.allclose(got, torch.tensor([1 + math.sqrt(0.5)]))
    torch.manual_seed(0)
    net, data = mlp(4), [(torch.randn(30, 6), torch.randint(0, 3, (30,))) for _ in range(3)]
    act = pk.create("lap_act", net, rates=[0.6] * 3, round=1)
    act.prune(PruneContext(batches=data))
    sc = S.activation_scales(net, [net[0], net[2], None], data, None)
    scaled = [p.detach() * (s.view(-1, 1) if s is not None else 1) for p, s in zip(act.masks.params, sc)]
    from prunekit.sparsity import topk_mask

    for (name, mask), score in zip(act.masks.items(), S.lap_scores(scaled)):
        assert torch.equal(mask, topk_mask(score, int(mask.sum())))
    with pytest.raises(ConfigError, match="batches"):
        pk.create("lap_act", mlp(4), sparsity=0.5).prune()


def hessian_diag(model, x, y):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_of(name):
        def f(w):
            out = torch.func.functional_call(model, {**params, name: w}, (x,))
            return nn.functional.cross_entropy(out, y)
        return f
    return [torch.autograd.functional.hessian(loss_of(n), p).reshape(p.numel(), p.numel()).diagonal().view_as(p)
            for n, p in params.items() if n.endswith("weight")]


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_diag_ggn_equals_exact_hessian_diagonal_for_relu_nets(kind):
    torch.manual_seed(5)
    if kind == "mlp":
        model, x = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), torch.randn(7, 4)
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(3 * 2 * 2, 3))
        x = torch.randn(7, 2, 8, 8)
    y = torch.randint(0, 3, (7,))
    layers = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    got = S.diag_ggn(model, layers, [(x[:4], y[:4]), (x[4:], y[4:])], None)
    for g, h in zip(got, hessian_diag(model, x, y)):
        assert torch.allclose(g, h, atol=1e-6, rtol=1e-4)
    many = [(x.repeat(300, *[1] * (x.dim() - 1)), y.repeat(300))] * 2  # 600 label draws per sample
    mc = S.diag_ggn(model, layers, many, None, mode="mc", generator=torch.Generator().manual_seed(0))
    assert all(torch.allclose(a, b, atol=0.02 * float(b.abs().max()), rtol=0.15) for a, b in zip(mc, got))


def test_obd_scores_h_w2_over_2():
    torch.manual_seed(6)
    model, data = mlp(6), [(torch.randn(20, 6), torch.randint(0, 3, (20,)))]
    pruner = pk.create("obd", model, rates=[0.5] * 3, round=1)
    h = S.diag_ggn(model, [model[0], model[2], model[4]], data, None)
    pruner.prune(PruneContext(batches=data))
    from prunekit.sparsity import topk_mask

    for (name, mask), hi, p in zip(pruner.masks.items(), h, pruner.masks.params):
        assert torch.equal(mask, topk_mask(hi * p.detach() ** 2 / 2 * mask, int(mask.sum())))


# --- end to end --------------------------------------------------------------------------------------
def test_smoke_recipe_on_real_mnist(mnist_dir, tmp_path):
    from prunekit.experiments import build_config, load_recipe, run_experiment

    raw = load_recipe("lap_fcn_mnist_smoke")
    cfg = build_config(raw, [("data.root", str(mnist_dir)), ("output.root", str(tmp_path)),
                             ("output.save_model", False)])
    row = run_experiment(cfg)
    assert row["achieved_sparsity"] == pytest.approx(1 - 72957 / 1_147_000)
    assert row["final_acc"] > 85.0
