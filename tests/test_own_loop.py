"""The own-loop contract: ``pruner.step()`` after ``optimizer.step()`` is the method, or it refuses in one
line naming the call the method needs; the documented per-family examples run and reach their sparsity."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.methods import METHODS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_loop_by_family.py"


@pytest.fixture(scope="module")
def families():
    spec = importlib.util.spec_from_file_location("own_loop_by_family", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family,sparsity", [("pai", 0.9), ("dst", 0.9), ("bip", 0.9), ("imp", 0.9), ("lap", 0.9),
                                             ("structured", 0.5)])
def test_family_example_runs(families, family, sparsity):
    pruner, model = families.FAMILIES[family]()
    assert pruner.masks.sparsity() == pytest.approx(sparsity, abs=2e-3)
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p.detach()[~m]) == 0
    assert families.accuracy(model) > 60.0


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("name,needs", [("bip", "train_step"), ("rigl", "wrap")])
def test_step_refuses_where_it_is_not_the_method(name, needs):
    model = _model()
    pruner = pk.create(name, model, sparsity=0.5, **({"total_steps": 10} if name == "rigl" else {}))
    pruner.prune()
    with pytest.raises(ConfigError, match=needs) as info:
        pruner.step()
    assert "\n" not in str(info.value)


def test_imp_collapsed_prune_refuses_step_and_levels_run():
    model = _model()
    imp = pk.create("imp", model, sparsity=0.5, prune_fraction=0.5)
    imp.prune()
    with pytest.raises(ConfigError, match="prune_level"):
        imp.step()
    imp2 = pk.create("imp", _model(), sparsity=0.5, prune_fraction=0.5)
    imp2.record_rewind_point()
    imp2.prune_level(1)
    imp2.rewind_()
    imp2.step()  # the level's own training: allowed
    assert imp2.masks.sparsity() == pytest.approx(0.5, abs=1e-2)


def test_hydra_prune_without_data_refuses():
    with pytest.raises(ConfigError, match="PruneContext"):
        pk.create("hydra", _model(), sparsity=0.5).prune()


@pytest.mark.parametrize("name", [n for n in METHODS.names() if n not in ("bip", "rigl", "imp", "hydra")])
def test_step_after_optimizer_step_keeps_pruned_weights_zero(name):
    """For every method that accepts ``step()``: prune, a plain loop with ``step()``, masks hold."""
    model = _model()
    settings = {} if name == "dense" else {"sparsity": 0.5}
    fields = METHODS.get(name).Config.model_fields
    if "total_steps" in fields:
        settings["total_steps"] = 10
    if "update_frequency" in fields:
        settings["update_frequency"] = 2
    pruner = pk.create(name, model, **settings)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(4)]
    ctx = pk.PruneContext(batches=data, total_steps=10, steps_per_epoch=4)
    pruner.setup(ctx)
    pruner.on_init(ctx) if pruner.schedule in ("init", "during") else pruner.prune(ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data * 2:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p.detach()[~m]) == 0


def test_create_rejects_unknown_setting_with_suggestion():
    with pytest.raises(ConfigError, match="sparsity") as info:
        pk.create("magnitude", _model(), sparsty=0.5)
    assert "\n" not in str(info.value)
