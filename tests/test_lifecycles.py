"""Lifecycles: every method's declared schedule has a registered lifecycle; a new protocol is one registered
function (the protocol registry test); the declaration is read without a model; the training-FLOPs hook."""
import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import UnknownNameError
from prunekit.experiments import build_config, run_experiment
from prunekit.experiments.lifecycles import LIFECYCLES, Facts, Outcome, prune_once
from prunekit.experiments.run_cost import RunCost
from prunekit.experiments.sweep import group_key
from prunekit.experiments.sweep_cost import phase_steps, phases
from prunekit.methods import METHODS, method_config, method_schedule
from prunekit.methods.lap import MP
from prunekit.train import evaluate


@LIFECYCLES.register("test_train_then_prune", facts=Facts(phases=("train",)))
def train_then_prune(run) -> Outcome:
    """Train the dense network with the method's hooks, then prune once; no fine-tuning."""
    summary = run.fit(run.cfg.train, "train")
    record = prune_once(run, run.context(run.cfg.train), "never", run.pruner.prune, "prune",
                        lambda: {"pruned_acc": evaluate(run.built.model, run.built.test_loader)["acc"]})
    cost = RunCost()
    cost.add(summary["steps"])
    return Outcome({**summary, "final_acc": record["pruned_acc"]}, summary["wall_time"], cost, record)


def _recipe(tmp_path, method):
    return {"name": "lc", "seed": 0, "output": {"root": str(tmp_path / "runs")}, "method": method,
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "data": {"name": "sklearn_digits", "batch_size": 64, "test_batch_size": 512, "augment": False},
            "train": {"duration": "1ep", "lr": 0.05}}


def test_a_new_protocol_is_one_registered_function(tmp_path, monkeypatch):
    monkeypatch.setattr(MP, "schedule", "test_train_then_prune")
    cfg = build_config(_recipe(tmp_path, {"name": "mp", "sparsity": 0.75}))
    row = run_experiment(cfg)
    run_dir = tmp_path / "runs" / "lc" / row["run_dir"].rsplit("/", 1)[1]
    assert row["achieved_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert row["final_acc"] == row["pruned_acc"] == json.loads((run_dir / "prune.json").read_text())["pruned_acc"]
    assert (run_dir / "masks.safetensors").is_file() and (run_dir / "metrics-train.jsonl").is_file()
    assert not (run_dir / "metrics-finetune.jsonl").exists()  # not the "after" protocol
    assert row["train_steps"] == phase_steps(cfg, cfg.train)  # one epoch, nothing else trained
    # what the rest of the harness knows of it comes from its registration alone
    assert phases(cfg) == [("train", phase_steps(cfg, cfg.train))]
    assert group_key(cfg).startswith("run-")  # no shared pretraining


def test_a_method_declaring_an_unregistered_lifecycle_is_refused_before_any_file(tmp_path, monkeypatch):
    monkeypatch.setattr(MP, "schedule", "at_the_end")
    with pytest.raises(UnknownNameError, match="unknown lifecycle 'at_the_end'"):
        run_experiment(build_config(_recipe(tmp_path, {"name": "mp", "sparsity": 0.5})))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_declares_a_registered_lifecycle(name):
    settings = {"name": name, "sparsity": 0.5} if name != "dense" else {"name": name}
    assert method_schedule(settings) in LIFECYCLES.names()
    assert "when" not in METHODS.meta(name)  # one source: the method, not the registry's metadata


@pytest.mark.parametrize("name", ["magnitude", "structured"])
def test_a_setting_decides_the_schedule_of_model_and_settings_alike(name):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    for when in ("init", "after"):
        cfg = method_config({"name": name, "sparsity": 0.5, "when": when})
        assert method_schedule(cfg) == when == METHODS.get(name).schedule_for(cfg)
        assert pk.create(name, model, sparsity=0.5, when=when).schedule == when


def test_training_flops_hook_is_none_unless_the_method_counts_steps():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    assert pk.create("snip", model, sparsity=0.5).training_flops_ratio((8,)) is None
    dst = pk.create("set", model, sparsity=0.5, total_steps=4, update_frequency=2)
    opt = dst.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    dst.on_init(pk.methods.PruneContext(total_steps=4))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.randint(0, 4, (4,))).backward()
        opt.step()
    assert 0.0 < dst.training_flops_ratio((8,)) < 1.0
