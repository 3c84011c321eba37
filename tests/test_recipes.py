"""Every shipped recipe and sweep file expands, validates, and builds each of its runs' pruners on the
meta device (shapes only): a typo, an unknown option or a rate table that does not fit its model fails
here, not hours into a sweep on a cluster."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import prunekit as pk
from prunekit.data.specs import get_spec
from prunekit.experiments.config import _meta_model, check_compatible, model_kwargs
from prunekit.experiments.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_expands_and_every_run_builds(path):
    sweep = load_sweep(str(path))
    assert sweep.configs, path
    built = set()
    for cfg in sweep.configs:
        check_compatible(cfg)
        spec = get_spec(cfg.data.name)
        kwargs = json.dumps(model_kwargs(cfg, spec), sort_keys=True, default=str)
        key = (cfg.model.name, kwargs, json.dumps(cfg.method, sort_keys=True, default=str))
        if key in built:
            continue
        built.add(key)
        settings = {k: v for k, v in cfg.method.items() if k != "name"}
        pruner = pk.create(cfg.method["name"], _meta_model(cfg.model.name, kwargs, spec.num_classes), **settings)
        assert 0.0 <= pruner.target_sparsity() < 1.0
