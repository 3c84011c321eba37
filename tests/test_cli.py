"""The command line: bad input is one line + exit 2 with nothing written; list/show/results work."""
import pytest
import yaml

from prunekit.cli import main
from tests.reliability import cli_error, record


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


BAD_OVERRIDES = [
    (["trian.lr=0.1"], "unknown key 'trian' (did you mean 'train'?)"),
    (["train.lrr=0.1"], "unknown key 'train.lrr' (did you mean 'lr'?)"),
    (["train.lr=abc"], "train.lr='abc': Input should be a valid number"),
    (["seed=[1, 2]"], "seed=[1, 2]: Input should be a valid integer"),
    (["method.name=magnitud"], "unknown method 'magnitud' (did you mean 'magnitude'?)"),
    (["method.sparsity=1.5"], "method.sparsity=1.5: allowed: a float in [0, 1)"),
    (["method.sparsity=-0.1"], "method.sparsity=-0.1: allowed: a float in [0, 1)"),
    (["method.sparsity=.nan"], "method.sparsity=nan: allowed: a float in [0, 1)"),
    (["train.duration=0ep"], "train.duration='0ep': duration '0ep' must be positive"),
    (["train.duration=-3ep"], "train.duration='-3ep': '-3ep' is not a duration; allowed: '<n>ep' or '<n>it'"),
    (["finetune.duration=0it"], "finetune.duration='0it': duration '0it' must be positive"),
    (["train.eval_every=0"], "eval_every must be a positive number of steps"),
    (["data.batch_size=0"], "data.batch_size=0: Input should be greater than 0"),
    (["model.name=lenet3000"], "unknown model 'lenet3000' (did you mean 'lenet300_100'"),
    (["data.name=mnits"], "unknown dataset 'mnits' (did you mean 'mnist'"),
    (["data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
    (["method={name: bip, sparsity: 0.5, structure: filter}"],
     "method.structure='filter' prunes conv filters but model 'lenet300_100' has no conv layer; "
     "allowed: structure='unstructured'"),
    (["model.name=lenet5", "model.kwargs={in_channels: 3}"],
     "model 'lenet5' does not accept 'mnist' inputs of shape (1, 28, 28)"),
    (["model.kwargs={num_classes: 100}"], "model.kwargs.num_classes=100 but dataset 'mnist' has 10 classes"),
    (["method={name: snip, sparsity: 0.5, targets: {include: ['head*']}}"],
     "method.targets={'include': ['head*']} selects no weight of model 'lenet300_100'"),
]


@pytest.mark.parametrize("overrides, expected", [pytest.param(o, e, id=" ".join(o)) for o, e in BAD_OVERRIDES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, overrides, expected):
    root = tmp_path / "runs"
    line = cli_error(capsys, ["run", "lenet300_mnist", f"output.root={root}", *overrides], written=root)
    assert expected in line
    record("config", f"`prunekit run lenet300_mnist {' '.join(overrides)}`", f"exit 2, nothing written: `{line}`")


def test_incompatible_grid_point_fails_before_the_first_run(capsys, tmp_path):
    """The third grid point cannot run: nothing of the first two is written either."""
    root = tmp_path / "runs"
    grid = "grid={model.name: [mlp, lenet300_100, lenet5]}"
    line = cli_error(capsys, ["run", "quickstart", f"output.root={root}", grid], written=root)
    assert line == "prunekit: error: lenet5: input_size=8 is not allowed; allowed: an integer >= 16"
    record("config", f"`prunekit run quickstart {grid}` (8x8 digits; the third model needs 16x16)",
           f"exit 2 before the first run starts, nothing written: `{line}`")


def test_unknown_recipe_and_bad_yaml(capsys, tmp_path):
    line = cli_error(capsys, ["run", "quickstrat"])
    assert "unknown recipe 'quickstrat' (did you mean 'quickstart'?)" in line
    record("config", "`prunekit run quickstrat`", f"exit 2: `{line[:90]}...`")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: mlp\n")
    line = cli_error(capsys, ["run", str(bad)])
    assert "bad.yaml: line 2 is not valid YAML" in line
    record("config", "a recipe with a YAML syntax error (`model: {name: mlp`)", f"exit 2: `{line}`", tmp_path=tmp_path)
    bad.write_text("- just\n- a list\n")
    code, _, err = run_cli(capsys, "show", str(bad))
    assert code == 2 and "must be a mapping" in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["list", "thingies"])
    assert e.value.code == 2


def test_list_and_show(capsys):
    code, out, _ = run_cli(capsys, "list", "methods")
    assert code == 0 and {"dense", "random", "magnitude"} <= {line.split()[0] for line in out.splitlines()}
    code, out, _ = run_cli(capsys, "list", "models")
    assert "lenet300_100" in out and "cifar_resnet20" in out
    code, out, _ = run_cli(capsys, "list", "datasets")
    assert "mnist" in out and "sklearn_digits" in out
    code, out, _ = run_cli(capsys, "list", "recipes")
    assert "quickstart" in out
    code, out, _ = run_cli(capsys, "show", "quickstart", "seed=3")
    docs = list(yaml.safe_load_all(out))
    assert len(docs) == 6 and all(d["seed"] == 3 for d in docs)
    assert [d["method"]["name"] for d in docs][:2] == ["dense", "random"]


def test_run_skips_finished_and_results_lists_rows(capsys, tmp_path):
    root = tmp_path / "runs"
    args = ["run", "quickstart", f"output.root={root}", "train.duration=2ep", "finetune.duration=1ep", "-q"]
    assert run_cli(capsys, *args)[0] == 0
    store = root / "results.sqlite"
    code, out, _ = run_cli(capsys, "results", "--store", str(store))
    assert code == 0 and out.count("quickstart") >= 6
    import sqlite3

    con = sqlite3.connect(store)
    assert con.execute("select count(*) from runs").fetchone()[0] == 6
    mtimes = {p: p.stat().st_mtime for p in root.rglob("result.json")}
    assert len(mtimes) == 6
    assert run_cli(capsys, *args)[0] == 0  # everything finished: skipped, nothing rewritten
    assert {p: p.stat().st_mtime for p in root.rglob("result.json")} == mtimes
    assert con.execute("select count(*) from runs").fetchone()[0] == 6


def test_tensorboard_missing_is_a_clear_error_before_anything_is_written(capsys, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    root = tmp_path / "runs"
    code, _, err = run_cli(capsys, "run", "quickstart", f"output.root={root}", "output.tensorboard=true")
    assert code == 2 and "pip install 'prunekit[tensorboard]'" in err
    assert not (root / "quickstart").exists()


def test_tensorboard_scalars_when_installed(capsys, tmp_path):
    pytest.importorskip("tensorboard")
    root = tmp_path / "runs"
    code, _, _ = run_cli(capsys, "run", "quickstart", f"output.root={root}", "output.tensorboard=true",
                         "train.duration=1ep", "method={name: random, sparsity: 0.5}", "grid={}", "-q")
    assert code == 0
    assert list(root.rglob("events.out.tfevents.*"))


def test_grid_overrides_and_duplicate_points(capsys):
    code, out, _ = run_cli(capsys, "show", "quickstart", "grid={seed: [0, 1, 2]}")
    assert [d["seed"] for d in yaml.safe_load_all(out)] == [0, 1, 2]
    # overriding the gridded key makes every point the same run: listed once
    code, out, _ = run_cli(capsys, "show", "quickstart", "method={name: dense}")
    assert len(list(yaml.safe_load_all(out))) == 1


def test_python_run_api(tmp_path):
    import prunekit as pk

    row = pk.run({"name": "api", "model": {"name": "mlp"}, "data": {"name": "sklearn_digits", "augment": False},
                  "method": {"name": "random", "sparsity": 0.5, "seed": 0}, "train": {"duration": "1ep"},
                  "output": {"root": str(tmp_path)}})
    assert row["status"] == "finished" and row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_a_failed_grid_run_is_stored_and_the_grid_goes_on(tmp_path, capsys):
    import yaml

    from prunekit.experiments import ResultsStore

    recipe = tmp_path / "g.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "g", "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "sklearn_digits", "batch_size": 64, "augment": False},
        "train": {"duration": "1ep", "lr": 0.05}, "method": {"name": "random", "sparsity": 0.5},
        "grid": {"method.sparsity": [0.9999, 0.5]}, "output": {"root": str(tmp_path / "runs")}}))
    assert main(["run", str(recipe), "-q"]) == 1  # the collapsed first run does not stop the second
    err = capsys.readouterr().err
    assert "run 1/2 failed: layer collapse" in err and "1 of 2 runs failed" in err
    rows = ResultsStore(tmp_path / "runs" / "results.sqlite").rows()
    assert sorted(r["status"] for r in rows) == ["failed", "finished"]
