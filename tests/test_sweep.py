"""Sweeps: grid expansion (base recipe, dense without sparsities, overrides), bad input, cache groups and
their lock, cost estimates (hand-computed step counts), running, skipping and failing runs."""
import threading
import time

import pytest
import yaml

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.experiments import build_config
from prunekit.methods import method_schedule
from prunekit.experiments.sweep import (group_lock, groups_of, load_sweep, run_status, run_sweep,
                                        threads_per_worker)
from prunekit.experiments.sweep_cost import estimate, phase_steps, steps_per_epoch

TINY = {
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "sklearn_digits", "batch_size": 64, "test_batch_size": 512, "augment": False},
    "train": {"duration": "2ep", "lr": 0.05},
    "finetune": {"duration": "1ep", "lr": 0.01},
}


def _write(path, tree):
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture
def base_recipe(tmp_path):
    return _write(tmp_path / "base.yaml", {
        "name": "base", **TINY, "output": {"root": str(tmp_path / "runs")},
        "grid": {"method": [{"name": "dense"}, {"name": "random", "allocation": "erk"},
                            {"name": "magnitude", "when": "after"}]},
        "reference": {"dense": 97.0, "source": "made up"},
    })


def test_grid_with_base_recipe_runs_dense_once_per_seed(tmp_path, base_recipe):
    sweep = _write(tmp_path / "sw.yaml", {"base": str(base_recipe), "workers": 3,
                                          "grid": {"method.sparsity": [0.5, 0.9], "seed": [0, 1]}})
    s = load_sweep(str(sweep))
    assert s.name == "sw" and s.workers == 3
    # 2 seeds x (1 dense + 2 sparse methods x 2 sparsities)
    assert len(s.configs) == 10
    dense = [c for c in s.configs if c.method["name"] == "dense"]
    assert [c.seed for c in dense] == [0, 1] and all("sparsity" not in c.method for c in dense)
    combos = {(c.method["name"], c.method.get("sparsity"), c.seed) for c in s.configs}
    assert ("random", 0.5, 1) in combos and ("magnitude", 0.9, 0) in combos
    assert all(c.reference == {"dense": 97.0, "source": "made up"} for c in s.configs)
    assert all(c.name == "sw" and c.model.kwargs == {"hidden": [16]} for c in s.configs)


def test_overrides_edit_grid_and_every_run(tmp_path, base_recipe):
    sweep = _write(tmp_path / "sw.yaml", {"base": str(base_recipe), "grid": {"method.sparsity": [0.5, 0.9], "seed": [0, 1]}})
    s = load_sweep(str(sweep), ["grid.seed=[7]", "train.duration=1ep"])
    assert len(s.configs) == 5 and {c.seed for c in s.configs} == {7}
    assert {c.train.duration for c in s.configs} == {"1ep"}
    s = load_sweep(str(sweep), ["grid.method.sparsity=[0.8]"])  # a dotted grid key
    assert {c.method.get("sparsity") for c in s.configs} == {None, 0.8} and len(s.configs) == 6
    s = load_sweep(str(sweep), ["grid={seed: [3, 4]}"])  # the whole grid: the base recipe's methods too
    assert [(c.method["name"], c.seed) for c in s.configs] == [("dense", 3), ("dense", 4)]


@pytest.mark.parametrize("tree, message", [
    ({"workers": 0}, "workers=0: allowed: an integer >= 1"),
    ({"workers": "two"}, "workers='two'"),
    ({"base": 12}, "base must be a recipe name or path"),
    ({"base": "quickstrat"}, "did you mean 'quickstart'"),
    ({"trian": {}}, "unknown key 'trian'"),
    ({"grid": {"seed": []}}, "grid.seed must be a non-empty list"),
    ({"grid": [1, 2]}, "grid must be a mapping"),
    ({"base": "quickstart", "grid": "seed"}, "grid must be a mapping"),
])
def test_bad_sweep_files(tmp_path, tree, message):
    sweep = _write(tmp_path / "bad.yaml", {**TINY, "method": {"name": "dense"}, **tree})
    with pytest.raises(ConfigError, match=None) as e:
        load_sweep(str(sweep))
    assert message in str(e.value)


def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    sweep = _write(tmp_path / "bad.yaml", {**TINY, "output": {"root": str(tmp_path / "runs")},
                                           "grid": {"method.name": ["random", "magnitud"]}})
    assert main(["sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'magnitud'" in err[0]
    ok = _write(tmp_path / "ok.yaml", {**TINY, "output": {"root": str(tmp_path / "runs")}})
    assert main(["sweep", str(ok), "--workers", "0"]) == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method, schedule", [
    ({"name": "dense"}, "none"), ({"name": "random"}, "init"), ({"name": "magnitude", "when": "init"}, "init"),
    ({"name": "magnitude"}, "after"), ({"name": "imp", "sparsity": 0.5}, "iterative"), ({"name": "rigl"}, "during"),
])
def test_method_schedule_without_a_model(method, schedule):
    assert method_schedule(method) == schedule


def _cfgs(tmp_path, methods, seeds=(0,)):
    return [build_config({**TINY, "name": "g", "seed": s, "method": m, "output": {"root": str(tmp_path)}})
            for s in seeds for m in methods]


def test_groups_share_pretraining_only(tmp_path):
    methods = [{"name": "dense"}, {"name": "magnitude", "sparsity": 0.5}, {"name": "magnitude", "sparsity": 0.9},
               {"name": "random", "sparsity": 0.5}, {"name": "random", "sparsity": 0.9}]
    groups = groups_of(_cfgs(tmp_path, methods, seeds=(0, 1)))
    # per seed: dense + both OMP runs share one pretraining; each random run is alone
    assert sorted(len(g.indices) for g in groups) == [1, 1, 1, 1, 3, 3]
    assert groups[0].indices == [0, 1, 2] and groups[0].key.startswith("pretrain-")


def test_steps_per_epoch_and_phase_lengths():
    digits = build_config({**TINY, "method": {"name": "dense"}})
    assert steps_per_epoch(digits) == 23  # ceil(1437 / 64)
    assert phase_steps(digits, digits.train) == 46
    dropped = build_config({**TINY, "method": {"name": "dense"}, "data": {**TINY["data"], "drop_last": True}})
    assert steps_per_epoch(dropped) == 22  # 1437 // 64
    granet = build_config({"model": {"name": "cifar_resnet20"}, "method": {"name": "dense"}, "train": {"duration": "3ep"},
                           "data": {"name": "cifar10", "root": "x", "batch_size": 128, "split": "granet45k"}})
    assert steps_per_epoch(granet) == 352  # ceil(45000 / 128)
    its = build_config({**TINY, "method": {"name": "dense"}, "train": {"duration": "500it"}})
    assert phase_steps(its, its.train) == 500


def test_estimate_counts_a_shared_pretraining_once(tmp_path):
    cfgs = _cfgs(tmp_path, [{"name": "dense"}, {"name": "magnitude", "sparsity": 0.5},
                            {"name": "magnitude", "sparsity": 0.9}, {"name": "random", "sparsity": 0.9}])
    cost = estimate(cfgs)
    assert [r.steps for r in cost.runs] == [46, 23, 23, 46]  # pretraining in the first run only
    assert cost.total("steps") == 138
    flops = 2 * (64 * 16 + 16 * 10)  # forward FLOPs of one sample (2 x MACs)
    assert cost.runs[0].flops == pytest.approx(3 * flops * 64 * 46)
    assert all(r.seconds is None for r in cost.runs)  # no finished runs to calibrate on


def test_dry_run_lists_and_costs_without_writing(tmp_path, base_recipe, capsys):
    sweep = _write(tmp_path / "sw.yaml", {"base": str(base_recipe), "grid": {"method.sparsity": [0.9], "seed": [0, 1]}})
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 finished (skipped), 0 partial (resume from checkpoint), 6 to run" in out
    assert "about 230 optimizer steps" in out  # per seed: dense 46 (shared) + OMP 23 + random 46
    assert not (tmp_path / "runs").exists()


def test_run_skip_fail_and_calibrated_estimate(tmp_path, capsys):
    cfgs = _cfgs(tmp_path, [{"name": "dense"}, {"name": "random", "sparsity": 0.9}])
    broken = build_config({**TINY, "name": "g", "method": {"name": "dense"}, "output": {"root": str(tmp_path)},
                           "data": {"name": "mnist", "root": str(tmp_path / "nowhere")}})
    seen = []
    events = run_sweep(cfgs + [broken], on_event=seen.append)
    assert [e.status for e in events] == ["finished", "finished", "failed"]
    assert str(tmp_path / "nowhere") in events[2].error
    assert [e.index for e in seen] == [0, 1, 2]
    assert [run_status(c) for c in cfgs] == ["finished", "finished"]
    again = run_sweep(cfgs)
    assert [e.status for e in again] == ["skipped", "skipped"]
    assert [e.row["final_acc"] for e in again] == [e.row["final_acc"] for e in events[:2]]
    # a new config of the same model/data is costed with the finished runs' seconds per training FLOP
    new = _cfgs(tmp_path, [{"name": "random", "sparsity": 0.5}], seeds=(5,))
    cost = estimate(new)
    rows = [e.row for e in events[:2]]
    rate = sum(r["wall_time"] for r in rows) / sum(3 * r["flops"] * 64 * 46 for r in rows)
    assert cost.runs[0].seconds == pytest.approx(cost.runs[0].flops * rate)


def test_a_held_group_lock_makes_a_sweep_wait(tmp_path):
    cfgs = _cfgs(tmp_path, [{"name": "random", "sparsity": 0.5}])
    (group,) = groups_of(cfgs)
    messages, events = [], []
    with group_lock(group):
        t = threading.Thread(target=lambda: events.extend(run_sweep(cfgs, on_message=messages.append)))
        t.start()
        time.sleep(0.5)
        assert not events and messages and "waiting for" in messages[0]
    t.join(60)
    assert [e.status for e in events] == ["finished"]


def test_threads_per_worker(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [threads_per_worker(n) for n in (1, 2, 3)] == [2, 1, 1]
