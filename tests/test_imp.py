"""IMP: the level plan (open_lth counting), nested masks, structured levels, rewinding, and the runner's
level chain (every level recorded, levels shared between runs that differ only in the final sparsity)."""
import json
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.experiments import ResultsStore, build_config, run_experiment
from prunekit.sparsity import num_keep


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # "training" between levels reorders magnitudes


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_levels_prune_a_fifth_of_the_survivors_nested_and_end_exactly_at_the_target(allocation):
    model = small_cnn()
    pruner = pk.create("imp", model, sparsity=0.9, allocation=allocation)
    plan = pruner.plan()
    total = pruner.masks.numel()
    assert len(plan) == math.ceil(math.log(0.1) / math.log(0.8))  # 11 levels of 20 % reach 90 %
    if allocation == "global":
        remaining = total
        for keep in plan[:-1]:
            remaining -= math.ceil(0.2 * remaining)  # open_lth sparse_global
            assert keep == (remaining,)
        assert plan[-1] == (num_keep(total, 0.9),)
    previous = [m.clone() for m in pruner.masks.values()]
    for level in range(1, len(plan) + 1):
        perturb(model)
        pruner.prune_level(level)
        for old, new in zip(previous, pruner.masks.values()):
            assert not (new & ~old).any()  # nested
        previous = [m.clone() for m in pruner.masks.values()]
        for p, m in zip(pruner.masks.params, pruner.masks.values()):
            assert torch.count_nonzero(p[~m]) == 0
    if allocation == "global":
        assert pruner.masks.nnz() == num_keep(total, 0.9)
    else:
        for stats in pruner.masks.per_layer().values():
            assert stats["nnz"] == num_keep(stats["numel"], 0.9)


def test_global_level_removes_the_smallest_survivors():
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    pruner = pk.create("imp", model, sparsity=0.5)
    pruner.prune_level(1)
    weights = torch.cat([p.detach().abs().reshape(-1) for p in pruner.masks.params])
    keep = torch.cat([m.reshape(-1) for m in pruner.masks.values()])
    assert int(keep.sum()) == 35 - math.ceil(0.2 * 35)
    assert weights[keep].min() > weights[~keep].max()


def test_structured_levels_prune_whole_filters():
    model = small_cnn()
    pruner = pk.create("imp", model, sparsity=0.75, structure="filter")
    assert pruner.masks.names() == ["0.weight", "2.weight"]
    for level in range(1, len(pruner.plan()) + 1):
        perturb(model)
        pruner.prune_level(level)
    for m in pruner.masks.values():
        units = m.flatten(1).any(1)
        assert torch.equal(units, m.flatten(1).all(1))
        assert int(units.sum()) == num_keep(m.shape[0], 0.75)


def test_rewind_point_is_captured_at_step_k_of_level_zero():
    model = small_cnn()
    pruner = pk.create("imp", model, sparsity=0.5, rewind_step=2)
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    seen = {}
    for step in range(1, 4):
        opt.zero_grad()
        model(torch.randn(4, 1, 8, 8)).sum().backward()
        opt.step()
        seen[step] = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(pruner.rewind_state[k], v) for k, v in seen[2].items())
    restored = pk.create("imp", small_cnn(), sparsity=0.5, rewind_step=2)
    restored.load_state_dict(pruner.state_dict())
    assert all(torch.equal(restored.rewind_state[k], v) for k, v in seen[2].items())


def recipe(root, sparsity, **method):
    return {
        "name": "imp_e2e", "seed": 0, "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "data": {"name": "sklearn_digits", "batch_size": 64, "augment": False},
        "train": {"duration": "2ep", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
        "method": {"name": "imp", "sparsity": sparsity, "prune_fraction": 0.5, **method},
        "output": {"root": str(root)},
    }


def test_runner_records_every_level_and_shares_levels_between_targets(tmp_path):
    row = run_experiment(build_config(recipe(tmp_path, 0.75, rewind_step=5)))
    run_dir = tmp_path / "imp_e2e" / row["run_dir"].split("/")[-1]
    levels = [json.loads(line) for line in (run_dir / "levels.jsonl").read_text().splitlines()]
    assert [r["level"] for r in levels] == [0, 1, 2]
    assert [round(r["sparsity"], 2) for r in levels] == [0.0, 0.5, 0.75]
    assert row["achieved_sparsity"] == levels[-1]["sparsity"]
    assert row["wall_time"] == pytest.approx(levels[-1]["total_wall_time"])
    assert all(r["steps"] == levels[0]["steps"] for r in levels)
    store_rows = ResultsStore(tmp_path / "results.sqlite").rows()
    assert sorted(r["status"] for r in store_rows) == ["finished", "level", "level"]
    (chain,) = (tmp_path / "_imp").iterdir()
    before = {p.name for p in chain.iterdir()}
    assert len(before) == 3  # level0 (holds the rewind point) + 2 levels
    row2 = run_experiment(build_config(recipe(tmp_path, 0.9, rewind_step=5)))
    after = {p.name for p in chain.iterdir()}
    assert before < after and len(after) == 5  # levels 1-2 reused, 3 (geometric) and 4 (clipped) new
    assert row2["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    from safetensors.torch import load_file

    masks = [load_file(str(chain / name / "level.safetensors")) for name in sorted(after) if name != "level0"]
    for a, b in zip(masks, masks[1:]):
        for key in (k for k in a if k.startswith("mask.")):
            if a[key].sum() >= b[key].sum():  # ordered by level: nested
                assert not (b[key].bool() & ~a[key].bool()).any()


def test_lr_rewinding_shares_the_dense_pretraining(tmp_path):
    dense = run_experiment(build_config({**recipe(tmp_path, 0.5), "method": {"name": "dense"}}))
    row = run_experiment(build_config(recipe(tmp_path, 0.5, rewind="lr")))
    levels = (tmp_path / "imp_e2e" / row["run_dir"].split("/")[-1] / "levels.jsonl").read_text().splitlines()
    assert json.loads(levels[0])["final_acc"] == dense["final_acc"]
    assert row["final_acc"] > 60.0
