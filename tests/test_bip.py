"""BiP and HYDRA: selection counts, straight-through gradients, the two implicit-gradient variants,
BiP ≡ HYDRA at lr2 = 0, structured masks, exact resume, and an end-to-end run through the runner."""
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.methods import PruneContext
from prunekit.methods.hydra import epoch_factor
from prunekit.sparsity.topk import WarmTopK
from prunekit.sparsity import num_keep, topk_mask


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )


def batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def make(name, seed=0, **kw):
    torch.manual_seed(seed)
    model = small_cnn()
    return model, pk.create(name, model, **kw)


def ctx(n=4, second=True, total=8):
    return PruneContext(batches=batches(n), second_batches=batches(n, seed=7) if second else None,
                        loss_fn=nn.functional.cross_entropy, total_steps=total, steps_per_epoch=n)


def ste_reference_grad(model, pruner, x, y):
    """∂ℓ/∂s through the reference's construction w = θ ⊙ topk(|s|) with an identity backward."""
    bank = pruner.bank
    scores = [s.detach().clone().requires_grad_(True) for s in bank.scores_v]
    named = dict(model.named_parameters())
    weights = {}
    for name, s, theta, keep in zip(bank.names, scores, bank.theta_v, bank.keep_v):
        a = s.abs()
        weights[name] = theta * (keep.float() + a - a.detach())
    out = torch.func.functional_call(model, {**named, **weights}, (x,))
    loss = nn.functional.cross_entropy(out, y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, scores)])


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.8, 0.99])
def test_global_topk_keeps_exactly_the_requested_count_even_with_ties(sparsity):
    model, pruner = make("bip", sparsity=sparsity)
    with torch.no_grad():
        for p in pruner.masks.params:
            p.copy_(torch.randint(-3, 4, p.shape).float())  # many ties
    pruner.prune(ctx())
    total = pruner.masks.numel()
    assert pruner.masks.nnz() == num_keep(total, sparsity)
    assert pruner.masks.nnz() == total - int(sparsity * total)  # the reference's j = int((1-k)·N) zeros
    kept = torch.cat([p.abs()[m] for p, m in zip(pruner.masks.params, pruner.masks.values())])
    dropped = torch.cat([pruner.bank.theta_v[i].abs()[~m] for i, m in enumerate(pruner.masks.values())])
    if len(dropped) and len(kept):
        assert kept.min() >= dropped.max()


def test_warm_started_selection_equals_the_full_selection():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5000, generator=g)
    warm, out = WarmTopK(1200), torch.zeros(5000, dtype=torch.bool)
    for step in range(60):
        scores += (0.002 if step % 10 else 0.5) * torch.randn(5000, generator=g)  # small steps, some jumps
        if step % 7 == 3:  # a block of exact ties straddling the threshold: lower indices must win
            threshold = scores.abs().kthvalue(5000 - 1200).values
            scores[2000:2100] = threshold
        a = scores.abs()
        assert torch.equal(warm(a, out), topk_mask(a, 1200))
        assert int(out.sum()) == 1200


def test_score_gradient_is_the_straight_through_gradient():
    model, pruner = make("bip", sparsity=0.7, score_init="weights")
    pruner.prune(ctx())
    with torch.no_grad():
        pruner.bank.scores.mul_(torch.where(torch.rand_like(pruner.bank.scores) < 0.3, -1.0, 1.0))
    (x, y), = batches(1, seed=3)
    expected = ste_reference_grad(model, pruner, x, y)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    got = pruner.bank.score_grad(pruner.bank.grad_z())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("legacy", [False, True])
def test_bip_m_step_with_lr2_zero_equals_a_hydra_score_step(legacy):
    _, hydra = make("hydra", sparsity=0.75, score_init="weights", allocation="global", score_lr=0.05,
                    score_momentum=0.9, score_weight_decay=1e-3)
    _, bip = make("bip", sparsity=0.75, score_init="weights", lr2=0.0, mask_lr=0.05, mask_momentum=0.9,
                  mask_weight_decay=1e-3, legacy_zero_grad=legacy)
    hydra.prune(PruneContext())
    bip.prune(ctx())
    bip.seen["weight_grad"] = True  # as after a θ-step: the weights hold (zeroed) gradients
    (x, y), = batches(1, seed=4)
    for _ in range(3):  # momentum included
        hydra.score_step(x, y, lr=0.05)
        bip.m_step(x, y, lr=0.05)
    torch.testing.assert_close(bip.bank.scores, hydra.bank.scores)
    for a, b in zip(bip.masks.values(), hydra.masks.values()):
        assert torch.equal(a, b)
    for a, b in zip(bip.norm_params, hydra.norm_params):
        torch.testing.assert_close(a, b)
    # torch<2 zero_grad semantics: the mask optimizer also decays the "frozen" weights
    assert torch.equal(bip.bank.theta, hydra.bank.theta) != legacy


class ReferenceBilevel:
    """``trainer/bilevel.py`` as written, on torch 2: scores share storage with the weights
    (``--scaled-score-init``), the mask is a full sort of all |scores| in every forward with an identity
    backward, two SGD optimizers over every parameter, ``zero_grad(set_to_none=False)``,
    ``switch_to_{finetune,bilevel,prune}`` via ``requires_grad``, four forward passes per iteration."""

    def __init__(self, model, names, keep, lr, mask_lr, lr2, wd):
        self.model, self.names, self.keep, self.lr2 = model, names, keep, lr2
        named = dict(model.named_parameters())
        self.weights = [named[n] for n in names]
        self.scores = [nn.Parameter(w.data) for w in self.weights]  # aliasing, as popup_scores.data = weight.data
        self.biases = [p for n, p in named.items() if n.endswith("bias") and not isinstance(
            model.get_submodule(n.rsplit(".", 1)[0]), nn.BatchNorm2d)]
        params = list(model.parameters()) + self.scores
        self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, foreach=True)
        self.mask_opt = torch.optim.SGD(params, lr=mask_lr, momentum=0.9, weight_decay=wd, foreach=True)
        self.params = params

    def forward(self, x):
        flat = torch.cat([s.view(-1) for s in self.scores]).abs()
        order = flat.sort(stable=True).indices
        adj = torch.ones_like(flat)
        adj[order[: int((1 - self.keep) * flat.numel())]] = 0
        adj = flat + (adj - flat).detach()  # GetSubnetUnstructured: identity backward
        masked = {n: w * a.view_as(w) for n, w, a in zip(self.names, self.weights, adj.split([w.numel() for w in self.weights]))}
        return torch.func.functional_call(self.model, {**dict(self.model.named_parameters()), **masked}, (x,))

    def switch(self, scores, weights):
        for t in self.scores:
            t.requires_grad_(scores)
        for t in self.weights + self.biases:
            t.requires_grad_(weights)

    def iteration(self, x1, y1, x2, y2):
        self.switch(False, True)  # switch_to_finetune
        self.opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(self.forward(x2), y2).backward()
        self.opt.step()
        self.switch(True, True)  # switch_to_bilevel
        self.opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(self.forward(x1), y1).backward()
        param_grad = [None if p.grad is None else p.grad.clone() for p in self.params]
        self.switch(True, False)  # switch_to_prune
        self.mask_opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(self.forward(x1), y1).backward()
        with torch.no_grad():
            for p, g in zip(self.params, param_grad):
                if p.grad is not None and g is not None:
                    p.grad.add_(-self.lr2 * p.grad * g)
        self.mask_opt.step()
        with torch.no_grad():
            self.forward(x1)  # the logging pass


def test_default_bip_matches_the_reference_bilevel_trainer():
    torch.manual_seed(3)
    ref_model = small_cnn()
    torch.manual_seed(3)
    model = small_cnn()
    pruner = pk.create("bip", model, sparsity=0.6, lr2=0.05, mask_lr=0.03, mask_weight_decay=1e-2, bn_passes=4)
    data, second = batches(3, seed=11), batches(3, seed=12)
    pruner.prune(PruneContext(batches=data, second_batches=second, total_steps=3, steps_per_epoch=3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    ref = ReferenceBilevel(ref_model, pruner.masks.names(), keep=0.4, lr=0.05, mask_lr=0.03, lr2=0.05, wd=1e-2)
    for step, ((x1, y1), (x2, y2)) in enumerate(zip(data, second), 1):
        pruner.train_step(x1, y1, opt, step)
        ref.iteration(x1, y1, x2, y2)
    ref_theta = torch.cat([w.detach().reshape(-1) for w in ref.weights])
    torch.testing.assert_close(pruner.bank.theta, ref_theta, rtol=1e-4, atol=1e-6)
    ref_scores = torch.cat([s.detach().abs().reshape(-1) for s in ref.scores])
    keep = torch.cat([m.reshape(-1) for m in pruner.masks.values()])
    assert torch.equal(keep, topk_mask(ref_scores, pruner.bank.total_keep))
    for (n, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        if n not in pruner.masks:  # BN affine and running statistics, linear bias
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_implicit_code_and_paper_terms():
    (x, y), = batches(1, seed=5)
    updates = {}
    for kind in ("none", "code", "paper"):
        model, pruner = make("bip", sparsity=0.6, score_init="weights", implicit=kind, lr2=0.5, gamma=2.0,
                             mask_momentum=0.0, mask_weight_decay=0.0, legacy_zero_grad=False)
        pruner.prune(ctx())
        before = pruner.bank.scores.clone()
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        gz = pruner.bank.grad_z()
        g = pruner.bank.score_grad(gz)
        m, sign = pruner.bank.factor.clone(), torch.sign(before)
        pruner.m_step(x, y, lr=1.0)
        updates[kind] = before - pruner.bank.scores
    torch.testing.assert_close(updates["none"], g)
    torch.testing.assert_close(updates["code"], g - 0.5 * g * g)
    torch.testing.assert_close(updates["paper"], g - sign * m * gz * gz / 2.0)


def test_shared_scores_are_the_weights_and_theta_keeps_pruned_values():
    model, pruner = make("bip", sparsity=0.8)
    pretrained = torch.cat([p.detach().reshape(-1).clone() for p in pruner.masks.params])
    pruner.prune(ctx())
    assert pruner.bank.scores is pruner.bank.theta
    torch.testing.assert_close(pruner.bank.theta, pretrained)
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p[~m]) == 0  # the model holds θ ⊙ m


def test_theta_step_is_sgd_on_dense_theta_with_masked_gradient():
    model, pruner = make("bip", sparsity=0.7, score_init="weights", legacy_zero_grad=False)
    pruner.prune(ctx())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    theta = pruner.bank.theta.clone()
    (x, y), = batches(1, seed=6)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = theta - 0.1 * (pruner.bank.grad_z() * pruner.bank.factor + 0.01 * theta)
    scores = pruner.bank.scores.clone()
    pruner.theta_step(x, y, opt)
    torch.testing.assert_close(pruner.bank.theta, expected)
    assert torch.equal(pruner.bank.scores, scores)  # frozen means frozen without the legacy quirk


@pytest.mark.parametrize("structure,dim", [("filter", 0), ("channel", 1)])
@pytest.mark.parametrize("method", ["bip", "hydra"])
def test_structured_masks_zero_whole_filters_or_channels(method, structure, dim):
    model, pruner = make(method, sparsity=0.5, structure=structure)
    assert all(".weight" in n and p.dim() == 4 for n, p in zip(pruner.masks.names(), pruner.masks.params))
    pruner.prune(ctx())
    if method == "bip":
        pruner.setup(ctx())
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step, (x, y) in enumerate(batches(3, seed=2), 1):
            pruner.train_step(x, y, opt, step)
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        other = [d for d in range(4) if d != dim]
        units = m.any(dim=other)
        assert torch.equal(units, m.all(dim=other))  # every unit all-kept or all-pruned
        assert int(units.sum()) == num_keep(m.shape[dim], 0.5)
        assert torch.count_nonzero(p[~m]) == 0
    assert torch.count_nonzero(model[-1].weight) == model[-1].weight.numel()  # linear layers stay dense


def run_steps(pruner, opt, data, second, start, stop):
    pruner.setup(PruneContext(batches=data, second_batches=second, total_steps=2 * len(data),
                              steps_per_epoch=len(data)))
    for step in range(start, stop + 1):
        x, y = data[(step - 1) % len(data)]
        pruner.train_step(x, y, opt, step)


@pytest.mark.parametrize("settings", [{}, {"accelerate": True, "score_init": "weights", "bn_passes": 4}])
def test_state_dict_resume_continues_exactly(settings):
    data, second = batches(3, seed=8), batches(3, seed=9)

    def fresh():
        model, pruner = make("bip", sparsity=0.7, finetune_epochs=1, **settings)
        pruner.prune(ctx())
        return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)

    model_a, a, opt_a = fresh()
    run_steps(a, opt_a, data, second, 1, 6)  # epoch 2 is the fine-tuning tail
    model_b, b, opt_b = fresh()
    run_steps(b, opt_b, data, second, 1, 2)
    saved = (model_b.state_dict(), opt_b.state_dict(), b.state_dict())
    model_c, c, opt_c = fresh()
    model_c.load_state_dict(saved[0])
    opt_c.load_state_dict(saved[1])
    c.load_state_dict(saved[2])
    run_steps(c, opt_c, data, second, 3, 6)
    for k, v in model_a.state_dict().items():
        torch.testing.assert_close(model_c.state_dict()[k], v, rtol=0, atol=0)
    assert torch.equal(a.bank.scores, c.bank.scores)


def test_schedules_golden():
    assert epoch_factor("step", 49, 100) == 1.0 and epoch_factor("step", 50, 100) == 0.1
    assert epoch_factor("step", 75, 100) == 0.01
    assert epoch_factor("step_mask", 74, 100) == 1.0 and epoch_factor("step_mask", 75, 100) == 0.1
    assert epoch_factor("step_mask", 90, 100) == 0.01
    assert epoch_factor("cosine_bip", 0, 100) == pytest.approx(0.5 * (1 + math.cos(-math.pi / 100)))


def test_hydra_scaled_score_init_and_training_changes_the_mask():
    model, pruner = make("hydra", sparsity=0.8, score_epochs=0)
    weights = [p.detach().clone() for p in pruner.masks.params]
    pruner.prune(ctx())
    for s, w in zip(pruner.bank.scores_v, weights):
        fan_in = w[0].numel()
        torch.testing.assert_close(s, math.sqrt(6 / fan_in) * w / w.abs().max())
    omp = [m.clone() for m in pruner.masks.values()]
    _, trained = make("hydra", sparsity=0.8, score_epochs=3, score_lr=0.5)
    trained.prune(ctx())
    assert any(not torch.equal(a, b) for a, b in zip(omp, trained.masks.values()))
    for layer, stats in trained.masks.per_layer().items():
        assert stats["nnz"] == num_keep(stats["numel"], 0.8), layer


def test_bip_end_to_end_through_the_runner(tmp_path):
    recipe = {
        "name": "bip_e2e", "seed": 0, "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "data": {"name": "sklearn_digits", "batch_size": 64, "augment": False, "split": "bip"},
        "train": {"duration": "3ep", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
        "finetune": {"duration": "3ep", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine_bip"},
        "method": {"name": "bip", "sparsity": 0.8, "finetune_epochs": 1},
        "output": {"root": str(tmp_path / "runs")},
    }
    from prunekit.experiments import build_config, run_experiment

    row = run_experiment(build_config(recipe))
    assert row["status"] == "finished" and row["wall_time"] > 0
    assert row["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert row["final_acc"] > 60.0
    metrics = (tmp_path / "runs" / "bip_e2e").glob("*/metrics-finetune.jsonl")
    assert len(next(metrics).read_text().splitlines()) == 3


def _diverging_scores(pruner):
    def step(*args, **kwargs):  # a diverged score optimizer
        pruner.bank.scores[3] = float("nan")
    return step


def test_hydra_stops_on_non_finite_scores_instead_of_a_mask_among_nans(monkeypatch):
    from prunekit.errors import NumericError

    torch.manual_seed(0)
    pruner = pk.create("hydra", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), sparsity=0.5,
                       score_epochs=2)
    monkeypatch.setattr(pruner, "score_step", _diverging_scores(pruner))
    with pytest.raises(NumericError, match="hydra: score epoch 0: the pruning scores are not finite") as err:
        pruner.prune(PruneContext(batches=[(torch.randn(4, 8), torch.randint(0, 4, (4,)))]))
    assert "\n" not in str(err.value)


def test_bip_stops_at_the_epoch_end_on_non_finite_scores():
    from prunekit.errors import NumericError

    torch.manual_seed(0)
    pruner = pk.create("bip", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), sparsity=0.5)
    pruner.prune(PruneContext(batches=[(torch.randn(4, 8), torch.randint(0, 4, (4,)))], total_steps=4,
                              steps_per_epoch=2))
    pruner.on_epoch_end(0)  # finite: nothing to say
    pruner.bank.scores[3] = float("nan")
    with pytest.raises(NumericError, match="bip: epoch 0: the pruning scores are not finite"):
        pruner.on_epoch_end(0)
