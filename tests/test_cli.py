"""The command line: bad input is one line + exit 2 with nothing written; list/show/results work."""
import pytest
import yaml

from prunekit.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trian.lr=0.1", "unknown key 'trian' (did you mean 'train'?)"),
        ("train.lrr=0.1", "unknown key 'train.lrr' (did you mean 'lr'?)"),
        ("method.name=magnitud", "unknown method 'magnitud' (did you mean 'magnitude'?)"),
        ("method.sparsity=1.5", "method.sparsity=1.5: allowed: a float in [0, 1)"),
        ("method.sparsity=.nan", "method.sparsity=nan"),
        ("train.duration=0ep", "train.duration"),
        ("model.name=lenet3000", "unknown model 'lenet3000'"),
        ("data.name=mnits", "unknown dataset 'mnits'"),
        ("data.root=/nonexistent/mnist", "/nonexistent/mnist"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, override, expected):
    root = tmp_path / "runs"
    code, out, err = run_cli(capsys, "run", "lenet300_mnist", f"output.root={root}", override)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), err
    assert expected in lines[0]
    assert not root.exists()


def test_unknown_recipe_and_bad_yaml(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "quickstrat")
    assert code == 2 and "did you mean 'quickstart'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: mlp\n")
    code, _, err = run_cli(capsys, "run", str(bad))
    assert code == 2 and "bad.yaml" in err and len(err.strip().splitlines()) == 1
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
