"""The run layout (``RunPaths``) and the result-row definition (``ResultRow``): one place each.

* every file a run writes is one that :class:`~prunekit.experiments.layout.RunPaths` names, under the names
  of every earlier version (existing output roots resume and report);
* no module but the layout spells a run directory's file names;
* the report finds a run's metrics from its directory alone, without building a configuration or a model;
* the store's columns, the runner's row, the CLI table and the report CSV all come from ``ResultRow``.
"""
import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

import prunekit
from prunekit.experiments import build_config, run_experiment
from prunekit.experiments.config import chain_hash, pretrain_hash, run_hash
from prunekit.experiments.layout import PHASE_ORDER, RunPaths
from prunekit.experiments.result_row import ResultRow, column, csv_columns, store_columns, table_columns

BASE = {"name": "lay", "seed": 0, "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "sklearn_digits", "batch_size": 64, "augment": False}, "train": {"duration": "1ep", "lr": 0.05}}
METHODS = [{"name": "magnitude", "sparsity": 0.5}, {"name": "random", "sparsity": 0.5}, {"name": "dense"},
           {"name": "imp", "sparsity": 0.75, "prune_fraction": 0.5, "rewind_step": 3}]


def _configs(root):
    return [build_config({**BASE, "method": m, "output": {"root": str(root)}}) for m in METHODS]


def test_the_layout_keeps_the_names_existing_run_directories_have(tmp_path):
    cfg = _configs(tmp_path)[0]
    paths = RunPaths.of(cfg)
    assert paths.path == tmp_path / "lay" / f"magnitude-{run_hash(cfg)}"
    named = [paths.config, paths.result, paths.prune, paths.search, paths.masks, paths.mask_report, paths.model,
             paths.levels, paths.checkpoint("train"), paths.metrics("finetune"), paths.tensorboard, paths.report]
    assert [p.relative_to(paths.path).as_posix() for p in named] == [
        "config.yaml", "result.json", "prune.json", "search.json", "masks.safetensors", "masks.json",
        "model.safetensors", "levels.jsonl", "checkpoint-train.pt", "metrics-finetune.jsonl", "tensorboard", "report"]
    shared = paths.pretraining
    assert shared.path == tmp_path / "_pretrained" / pretrain_hash(cfg)
    assert [shared.weights.name, shared.summary.name] == ["model.safetensors", "summary.json"]
    assert paths.chain.path == tmp_path / "_imp" / chain_hash(cfg)
    assert paths.chain.level(0).path.name == "level0" and paths.chain.level(2, "abc").path.name == "level2-abc"
    assert paths.chain.level(1, "t").state.name == "level.safetensors"
    assert paths.root.store == tmp_path / "results.sqlite" and paths.root.lock("k") == tmp_path / "_locks" / "k.lock"


def _named_by_layout(root, configs) -> set:
    names = set()
    for cfg in configs:
        paths = RunPaths.of(cfg)
        names |= {paths.config, paths.result, paths.prune, paths.search, paths.masks, paths.mask_report, paths.model,
                  paths.levels, *(f(p) for p in PHASE_ORDER for f in (paths.checkpoint, paths.metrics))}
        shared = paths.pretraining
        names |= {shared.weights, shared.summary, shared.checkpoint("pretrain"), shared.metrics("pretrain")}
        for level_dir in paths.chain.path.glob("*"):
            n, _, tag = level_dir.name.removeprefix("level").partition("-")
            level = paths.chain.level(int(n), tag)
            names |= {level.state, level.summary, level.checkpoint("train"), level.metrics("train")}
        names.add(paths.root.store)
    return names


def test_every_file_a_run_writes_is_one_the_layout_names(tmp_path):
    configs = _configs(tmp_path)
    for cfg in configs:
        run_experiment(cfg)
    written = {p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("results.sqlite-")}
    assert written and written <= _named_by_layout(tmp_path, configs)  # SQLite's own -wal/-shm files aside
    assert RunPaths.of(configs[3]).levels.is_file() and RunPaths.of(configs[0]).pretraining.complete()


def _string_constants(tree: ast.AST):
    """String literals (f-string parts included) that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


# a literal whose last path component is one of the layout's names (prose that mentions a file is fine)
_LAYOUT_NAME = re.compile(r"(^|/)(config\.yaml|result\.json|prune\.json|search\.json|masks\.safetensors|masks\.json|"
                          r"model\.safetensors|levels\.jsonl|level\.safetensors|summary\.json|results\.sqlite|"
                          r"tensorboard|level0|_pretrained|_imp|_locks|checkpoint-.*|metrics-.*)$")
ALLOWED = {
    # the CLI's --store default: spelled in the argument parser, which is built without importing the
    # experiments floor (a quick `prunekit --help`)
    ("prunekit/cli.py", "runs/results.sqlite"),
    ("prunekit/commands/report.py", "runs/results.sqlite"),
}


def test_no_module_but_the_layout_spells_a_run_directory_name():
    package = Path(prunekit.__file__).parent
    found = set()
    for path in package.rglob("*.py"):
        rel = path.relative_to(package.parent).as_posix()
        if rel == "prunekit/experiments/layout.py":
            continue
        for node in _string_constants(ast.parse(path.read_text())):
            if _LAYOUT_NAME.search(node.value):
                found.add((rel, node.value))
    assert found == ALLOWED


def _curve_run(root):
    """An after-training run directory (a config.yaml and its fine-tuning metrics) and its shared pretraining."""
    cfg = build_config({"name": "r", "model": {"name": "mlp"}, "method": {"name": "magnitude"},
                        "output": {"root": str(root)}})
    paths = RunPaths.of(cfg)
    paths.path.mkdir(parents=True)
    paths.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    paths.pretraining.path.mkdir(parents=True)
    line = lambda phase, i: json.dumps({"phase": phase, "step": i, "epoch": i + 1.0, "test_acc": 50.0 + i}) + "\n"  # noqa: E731
    paths.pretraining.metrics("pretrain").write_text(line("pretrain", 0) + line("pretrain", 1))
    paths.metrics("finetune").write_text(line("finetune", 0))
    return paths


def test_the_report_finds_a_runs_metrics_without_building_a_config_or_a_model(tmp_path, monkeypatch):
    from prunekit.experiments import config as config_module
    from prunekit.report import plots

    paths = _curve_run(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the report built a configuration or a model to find a metrics file")

    for name in ("build_config", "check_compatible", "create_model", "_meta_model"):
        monkeypatch.setattr(config_module, name, refuse)
    found = RunPaths.at(paths.path)
    assert found.curve_files() == [paths.pretraining.metrics("pretrain"), paths.metrics("finetune")]
    assert [r["total_epoch"] for r in plots.read_curve(paths.path)] == [1.0, 2.0, 3.0]
    paths.config.unlink()  # not a run prunekit wrote: its own metrics only, no guess at a shared pretraining
    assert RunPaths.at(paths.path).curve_files() == [paths.metrics("finetune")]


# --- the result row ----------------------------------------------------------------------------------------------

def test_the_store_the_runner_the_cli_table_and_the_csv_come_from_the_row_definition(tmp_path):
    from prunekit.cli import results_table
    from prunekit.experiments.store import COLUMNS, ResultsStore
    from prunekit.report.tables import ENTRY_FIELDS, aggregate, to_csv

    fields = [f.name for f in dataclasses.fields(ResultRow)]
    assert list(COLUMNS) == [*fields, "finished_at"]  # the store's schema, in the definition's order
    cfg = build_config({**BASE, "method": {"name": "random", "sparsity": 0.5}, "output": {"root": str(tmp_path)}})
    row = run_experiment(cfg)
    assert list(row)[:len(fields)] == fields  # the runner's row is a ResultRow (then the run's extra entries)
    stored = ResultsStore(tmp_path / "results.sqlite").get(row["run_id"])
    assert set(stored) == set(COLUMNS) and stored["achieved_sparsity"] == row["achieved_sparsity"]
    table = results_table([stored], context=True)
    defined = table_columns()  # the recipe/model/dataset context first, then the others
    assert [c.header for c in table.columns] == [c.label for c in defined if c.context] + [
        c.label for c in defined if not c.context]
    header = to_csv(aggregate([stored])).splitlines()[0].split(",")
    assert header == ENTRY_FIELDS + [c.csv for c in csv_columns()]


def test_a_new_field_of_the_definition_reaches_the_store_the_table_and_the_csv():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithEnergy(ResultRow):
        energy_j: float | None = column(label="energy J", fmt=".1f", csv="energy_j")

    assert store_columns(WithEnergy)["energy_j"] == "REAL"
    assert [c.name for c in table_columns(WithEnergy)][-1] == "energy_j"
    assert [c.name for c in csv_columns(WithEnergy)][-1] == "energy_j"
    assert list(store_columns(WithEnergy))[:-1] == [*store_columns(ResultRow)][:-1] + ["energy_j"]

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithHost(ResultRow):
        host: str = column(csv="host")

    with pytest.raises(TypeError, match="WithHost.host: a CSV column is a mean over seeds"):
        csv_columns(WithHost)


def test_the_cli_table_formats_each_column_as_the_definition_says():
    from rich.console import Console

    from prunekit.cli import results_table

    row = {"run_id": "a", "recipe": "r", "method": "random", "model": "mlp", "dataset": "d", "seed": 3,
           "achieved_sparsity": 0.123456, "final_acc": 91.234, "best_acc": None, "wall_time": 12.34,
           "status": "finished", "config": {"method": {"name": "random"}}}
    console = Console(width=200, record=True)
    console.print(results_table([row], context=False))
    line = [ln for ln in console.export_text().splitlines() if "random" in ln][0]
    cells = [c.strip() for c in line.split("│")[1:-1]]
    assert cells == ["random", "3", "0.1235", "91.23", "—", "12.3", "finished"]
