"""The command line a first user meets: overrides anywhere among the flags (run, show, sweep), a results
table that fits the terminal without cutting a column, a report in the single-column paper style."""
import json
import re

import pytest
import yaml

from prunekit.cli import main, parse_args
from prunekit.experiments import ResultsStore


def _status(argv: list[str]) -> int:
    """The exit status of ``prunekit argv`` (argparse's errors exit from inside ``main``)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_overrides_anywhere_among_the_flags(capsys):
    args = parse_args(["run", "quickstart", "-v", "seed=5", "--force", "method.sparsity=0.8"])
    assert args.verbose and args.force and args.overrides == ["seed=5", "method.sparsity=0.8"]
    args = parse_args(["sweep", "sweeps/quickstart_grid.yaml", "--dry-run", "grid.seed=[3,4]", "-j", "2"])
    assert args.dry_run and args.workers == 2 and args.overrides == ["grid.seed=[3,4]"]
    assert main(["show", "quickstart", "grid={}", "method={name: dense}", "seed=7"]) == 0
    (doc,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert doc["seed"] == 7
    assert _status(["show", "quickstart", "--nope", "seed=7"]) == 2  # a real unknown flag is still an error
    assert capsys.readouterr().err.strip() == "prunekit: error: unrecognized arguments: --nope"
    assert _status(["list", "methods", "seed=1"]) == 2  # a command without overrides takes none
    assert "unrecognized arguments: seed=1" in capsys.readouterr().err


def test_results_fit_the_terminal(tmp_path, capsys, monkeypatch):
    store = ResultsStore(tmp_path / "results.sqlite")
    methods = [{"name": "granet", "sparsity": 0.9, "initial_sparsity": 0.0, "update_frequency": 20},
               {"name": "granet", "sparsity": 0.9, "update_frequency": 20},
               {"name": "magnitude", "sparsity": 0.9, "when": "after", "allocation": "global"}]
    for i, method in enumerate(methods):
        store.record({"run_id": f"r{i}", "recipe": "quickstart", "method": method["name"],
                      "model": "mlp", "dataset": "sklearn_digits", "seed": 0, "target_sparsity": 0.9,
                      "achieved_sparsity": 0.9, "final_acc": 97.25, "best_acc": 97.5, "wall_time": 1.5,
                      "status": "finished", "config": json.dumps({"method": method})})
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["results", "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out
    assert "(model mlp, dataset sklearn_digits)" in " ".join(lines[:2])  # the same for every row: the title
    rows = [line.split() for line in lines if re.search(r"\d\.\d{4}", line)]
    assert [r[1:-6] for r in rows] == [["GraNet", "s_i=0"], ["GraNet", "s_i=0.5"], ["OMP"]]
    assert all(r[-6:] == ["0", "0.9000", "97.25", "97.50", "1.5", "finished"] for r in rows)


def test_report_in_the_paper_style(tmp_path, capsys):
    from prunekit.report import plots

    store = ResultsStore(tmp_path / "results.sqlite")
    for seed, acc in ((0, 97.0), (1, 98.0)):
        store.record({"run_id": f"d{seed}", "recipe": "q", "method": "dense", "model": "mlp",
                      "dataset": "sklearn_digits", "seed": seed, "target_sparsity": 0.0, "achieved_sparsity": 0.0,
                      "final_acc": acc, "best_acc": acc, "status": "finished", "config": "{}"})
    out = tmp_path / "paper"
    assert main(["report", "--store", str(store.path), "--out", str(out), "--style", "paper", "--no-html"]) == 0
    svg = (out / "q-mlp-sklearn_digits-accuracy.svg").read_text()
    width = float(re.search(r'width="([\d.]+)pt"', svg).group(1))
    assert width == pytest.approx(plots.STYLES["paper"].width * 72)  # single column: 3.4 in
    assert (out / "q-mlp-sklearn_digits-accuracy.pdf").read_bytes().startswith(b"%PDF")
