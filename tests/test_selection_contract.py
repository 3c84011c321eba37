"""The selection pipeline's contract over the registry: every method x every allocation and structure
it declares (``Config.allocations`` / ``Config.structures``) prunes to exactly the requested sparsity,
and every other kind is refused in one line."""
import pathlib
import re

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.methods import METHODS, PruneContext
from prunekit.sparsity import allocate, custom, num_keep

SPARSITY = 0.8
CUSTOM = {"1.weight": 0.5, "*": 0.85}  # an exact name beats a glob: layer 1 at 50 %, the others at 85 %


def net():
    # every weight's input dimension is a multiple of 4, so 2:4 groups are whole
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 12))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48, 10))


def context():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    return PruneContext(batches=data, loss_fn=nn.functional.cross_entropy, total_steps=20, steps_per_epoch=4)


def prune(name, model=net, **settings):
    torch.manual_seed(0)
    pruner = pk.create(name, model(), **settings)
    if pruner.schedule == "init":
        pruner.on_init(context())
    else:
        pruner.prune(context())
    return pruner


def weight_methods():
    return [n for n in METHODS.names() if n != "dense" and METHODS.meta(n).get("unit", "weight") == "weight"]


def cases():
    out = []
    for name in weight_methods():
        cfg = METHODS.get(name).Config
        if "allocation" in cfg.model_fields:
            out += [(name, "allocation", kind) for kind in cfg.allocations if kind != "rates"]  # LAP's own tables
        if "structure" in cfg.model_fields:
            out += [(name, "structure", kind) for kind in cfg.structures if kind != "unstructured"]
    return out


def test_every_selecting_method_declares_its_kinds():
    names = {n for n, _, _ in cases()}
    # the methods whose budget is spread by an allocation setting all expose it through the pipeline
    assert {"snip", "grasp", "synflow", "magnitude", "random", "imp", "hydra", "bip", "gmp", "granet", "rigl",
            "set", "dpai", "npb", "iter_snip", "prospr"} <= names


@pytest.mark.parametrize("name,setting,kind", cases())
def test_each_declared_kind_gives_exactly_the_requested_sparsity(name, setting, kind):
    if setting == "structure" and kind == "N:M":
        rounds = {"rounds": 1} if "rounds" in METHODS.get(name).Config.model_fields else {}
        pruner = prune(name, structure="2:4", **rounds)
        for layer, mask in pruner.masks.items():  # every group of 4 consecutive inputs keeps exactly 2
            assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all(), layer
        assert pruner.masks.sparsity() == pytest.approx(0.5)
        return
    if setting == "structure":  # whole units per layer
        pruner = prune(name, cnn, structure=kind, allocation="uniform", sparsity=SPARSITY)  # convs only
        dim = {"filter": 0, "channel": 1}[kind]
        for layer, mask in pruner.masks.items():
            units = mask.movedim(dim, 0).reshape(mask.shape[dim], -1)
            assert (units.all(1) | ~units.any(1)).all(), layer  # all or nothing per unit
            assert int(units.all(1).sum()) == num_keep(mask.shape[dim], SPARSITY), layer
        return
    allocation = CUSTOM if kind == "custom" else kind
    pruner = prune(name, allocation=allocation, sparsity=SPARSITY)
    shapes = {n: tuple(m.shape) for n, m in pruner.masks.items()}
    if kind == "global":
        assert pruner.masks.nnz() == num_keep(pruner.masks.numel(), SPARSITY)
        return
    if kind == "uniform" and hasattr(pruner, "step_allocation"):  # GMP_uniform's classifier rule
        budgets = pruner.step_allocation(SPARSITY)
    else:
        budgets = custom(shapes, CUSTOM) if kind == "custom" else allocate(kind, shapes, SPARSITY)
    for layer, stats in pruner.masks.per_layer().items():
        assert stats["nnz"] == num_keep(stats["numel"], budgets[layer]), layer


@pytest.mark.parametrize("name", weight_methods())
def test_an_undeclared_allocation_is_refused_in_one_line(name):
    cfg = METHODS.get(name).Config
    if "allocation" not in cfg.model_fields:
        with pytest.raises(ConfigError, match="allocation"):  # no such setting at all
            pk.create(name, net(), allocation="erk")
        return
    with pytest.raises(ConfigError, match="allocation=.*allowed") as err:
        pk.create(name, net(), allocation="per_layer_magic")
    assert "\n" not in str(err.value)


def test_overlapping_globs_with_different_values_are_refused():
    with pytest.raises(ConfigError, match="matches both .* with different values"):
        prune("magnitude", allocation={"*.weight": 0.5, "*": 0.9}, sparsity=0.5)
    same = prune("magnitude", allocation={"*.weight": 0.5, "*": 0.5}, sparsity=0.5)
    assert same.masks.sparsity() == pytest.approx(0.5, abs=1e-2)


def test_nm_with_several_rounds_is_refused():
    with pytest.raises(ConfigError, match="fixes the sparsity of every round; allowed: rounds=1"):
        pk.create("synflow", net(), structure="2:4")


def test_nm_fixes_the_sparsity_and_takes_no_allocation():
    assert pk.create("magnitude", net(), structure="2:4").config.sparsity == 0.5
    with pytest.raises(ConfigError, match="fixes sparsity=0.5"):
        pk.create("magnitude", net(), structure="2:4", sparsity=0.9)
    with pytest.raises(ConfigError, match="allocation does not apply"):
        pk.create("magnitude", net(), structure="2:4", allocation="erk")
    with pytest.raises(ConfigError, match="structure='3:2'.*0 < N < M"):
        pk.create("magnitude", net(), structure="3:2")
    with pytest.raises(ConfigError, match="structure='filter' is not allowed.*allowed: unstructured, N:M"):
        pk.create("magnitude", net(), structure="filter")


# Sorting and allocation checks outside prunekit/sparsity/, each with the reason it is not a selection of
# weights by score (those all go through prunekit.sparsity.select).
SELECTION = re.compile(r"kthvalue|\.topk\(|argsort|torch\.sort|\.sort\(|np\.partition|np\.sort|"
                       r"allocation\s*[!=]=|==\s*[\"']global[\"']")
ALLOWED = {
    "prunekit/data/loader.py": "random permutations and sampling without replacement of the data order",
    "prunekit/data/sklearn_digits.py": "sorting the indices of a fixed split",
    "prunekit/scoring/npb.py": "NPB's solver orders candidate units and kernel positions (its own greedy "
                               "program, not a top-k of weights)",
    "prunekit/scoring/phew.py": "PHEW's walks keep the first-visited positions in visit order",
    "prunekit/methods/hydra.py": "validation: whole-unit structures refuse a global allocation",
    "prunekit/methods/gmp.py": "GraNet's schedule: reference counting moves the uniform pruning steps, and "
                               "the exact global step rounds the cubic sparsity; the classifier rule is GMP_uniform",
    "prunekit/methods/lap.py": "validation: LAP's rates tables are their own allocation",
}


def test_no_selection_outside_the_pipeline():
    root = pathlib.Path(pk.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel.startswith("prunekit/sparsity/"):
            continue
        hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if SELECTION.search(line)]
        if hits:
            found[rel] = hits
    unexpected = {f: lines for f, lines in found.items() if f not in ALLOWED}
    assert not unexpected, f"top-k or allocation branches outside prunekit/sparsity/: {unexpected}"
    stale = [f for f in ALLOWED if f not in found]
    assert not stale, f"allow-list entries with nothing to allow (remove them): {stale}"


def test_nm_and_custom_maps_are_reachable_from_a_recipe(tmp_path):
    """A YAML recipe's method section reaches N:M and a custom per-layer map, end to end."""
    import yaml

    from prunekit.experiments import build_config, load_recipe
    from prunekit.experiments.runner import run_experiment

    text = f"""
name: reach
seed: 0
model: {{name: mlp, kwargs: {{hidden: [32]}}}}
data: {{name: sklearn_digits, batch_size: 64, augment: false}}
train: {{duration: 1ep, lr: 0.05}}
output: {{root: {tmp_path.as_posix()}}}
"""
    base = yaml.safe_load(text)
    (tmp_path / "nm.yaml").write_text(yaml.safe_dump({**base, "method": {"name": "magnitude", "structure": "2:4"}}))
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(
        {**base, "method": {"name": "snip", "sparsity": 0.9, "allocation": {"layers.0.weight": 0.5, "*": 0.95}}},
        sort_keys=True))  # the keys' order carries no meaning (run hashes sort them)
    nm = run_experiment(build_config(load_recipe(str(tmp_path / "nm.yaml"))))
    assert nm["achieved_sparsity"] == pytest.approx(0.5)
    mapped = run_experiment(build_config(load_recipe(str(tmp_path / "map.yaml"))))
    from safetensors.torch import load_file

    masks = load_file(str(tmp_path / "reach" / mapped["run_dir"].split("/")[-1] / "masks.safetensors"))
    assert set(masks) >= {"layers.0.weight"}
    for name, m in masks.items():
        want = 0.5 if name == "layers.0.weight" else 0.95
        assert int(m.numel() - m.sum()) == int(want * m.numel()), name
