"""Every surface around the configuration: results stores, output locations and run directories, path
parts from user input, numbers in the configuration and in command-line flags, mask files.

Each case damages a copy of two finished runs (one pruned at initialization, one pruned after a cached
dense pretraining), runs one command and asserts: exit status 2, one ``prunekit: error:`` line naming the
thing, and the whole temporary tree unchanged (nothing created, removed or written anywhere, so in
particular nothing outside ``output.root`` or ``--out``).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import prunekit as pk
from tests.reliability import cli_error, record, time_limit, tree, unchanged

RECIPE = {
    "name": "tiny",
    "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "data": {"name": "sklearn_digits", "batch_size": 64, "test_batch_size": 512, "augment": False},
    "method": {"name": "random", "sparsity": 0.5},
    "train": {"duration": "10it"},
}
AFTER = {"name": "magnitude", "sparsity": 0.5, "when": "after"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """``runs/`` with a finished ``random`` run (pruned at init) and a finished ``magnitude`` run pruned
    after the cached dense pretraining; ``tiny.yaml`` is the recipe."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(RECIPE))
    out = {"output": {"root": str(tmp / "runs")}}
    pk.run({**RECIPE, **out})
    pk.run({**RECIPE, **out, "method": AFTER})
    return tmp


class W:
    """The case's working copy: ``tmp`` (the whole tree compared before/after), ``root`` (output.root)."""

    def __init__(self, tmp: Path):
        self.tmp, self.root, self.recipe = tmp, tmp / "runs", tmp / "tiny.yaml"
        self.store = self.root / "results.sqlite"

    def run_dir(self, method: str) -> Path:
        (d,) = self.root.glob(f"tiny/{method}-*")
        return d

    @property
    def init(self) -> Path:
        return self.run_dir("random")

    @property
    def after(self) -> Path:
        return self.run_dir("magnitude")

    def run(self, *extra: str) -> list[str]:
        return ["run", str(self.recipe), f"output.root={self.root}", *extra]

    def run_after(self, *extra: str) -> list[str]:
        return self.run("method.name=magnitude", "method.when=after", *extra)

    def file(self, name: str, data: bytes = b"") -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path


def _foreign(path: Path, sql: str) -> Path:
    with sqlite3.connect(path) as con:
        con.executescript(sql)
    con.close()
    return path


def _newer_store(w: W) -> Path:
    path = w.tmp / "newer.sqlite"
    shutil.copy(w.store, path)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA user_version=99")
    con.close()
    return path


def _half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _store_cut(w: W) -> Path:
    path = w.tmp / "cut.sqlite"
    con = sqlite3.connect(w.store)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    path.write_bytes(w.store.read_bytes()[:4096 + 100])  # the header page and a torn second page
    return path


def _rand(n: int = 4096) -> bytes:
    return np.random.default_rng(0).bytes(n)


def _edit_yaml(path: Path, key: str, value) -> None:
    doc = yaml.safe_load(path.read_text())
    section, field = key.split(".")
    doc[section][field] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _partial(run_dir: Path) -> Path:
    (run_dir / "result.json").unlink()
    return run_dir


def _mask_file(w: W, values: dict[str, torch.Tensor] | None = None, dtype=None, fill=None) -> Path:
    """A mask file for the default ``mlp``: every mask all-ones, or ``fill`` in the first, as ``dtype``."""
    model = pk.models.create("mlp")
    masks = values if values is not None else {n: torch.ones_like(p, dtype=dtype or torch.uint8)
                                               for n, p in model.named_parameters() if n.endswith("weight")}
    if fill is not None:
        first = next(iter(masks))
        masks[first] = masks[first].clone()
        masks[first][0, 0] = fill
    path = w.tmp / "masks.safetensors"
    save_file(masks, str(path), metadata={"order": json.dumps(list(masks))})
    return path


def _measure(w: W, *extra: str) -> list[str]:
    return ["measure", "mlp", *extra]


def _out_under_file(w: W) -> str:
    return str(w.file("plain-file", b"x") / "sub")


@dataclass
class Case:
    area: str
    tried: str
    argv: Callable[[W], list[str]]
    expect: str  # a part of the error line


def _symlinked_recipe_dir(w: W) -> list[str]:
    elsewhere = w.tmp / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(w.root / "tiny"), str(elsewhere / "tiny"))
    (w.root / "tiny").symlink_to(elsewhere / "tiny")
    return w.run("seed=5")


def _corrupt_summary(w: W) -> list[str]:
    (summary,) = w.root.glob("_pretrained/*/summary.json")
    summary.write_text("{\"final_acc\": ")
    return w.run_after("method.sparsity=0.7")


def _no_masks_measure(w: W) -> list[str]:
    (w.init / "masks.safetensors").unlink()
    return ["measure", str(w.init)]


def _no_model_export(w: W) -> list[str]:
    (w.init / "model.safetensors").unlink()
    return ["export", str(w.init), "--out", str(w.tmp / "out")]


def _edited_config(w: W) -> list[str]:
    _edit_yaml(_partial(w.init) / "config.yaml", "train.lr", 0.5)
    return w.run()


def _edited_finished_config(w: W) -> list[str]:
    _edit_yaml(w.init / "config.yaml", "data.batch_size", 32)
    return w.run()


def _wrong_result(w: W) -> list[str]:
    shutil.copy(w.after / "result.json", w.init / "result.json")
    return w.run()


def _pickled_module_checkpoint(w: W) -> list[str]:
    torch.save(torch.nn.Linear(2, 2), _partial(w.init) / "checkpoint-train.pt")
    return w.run()


def _corrupt_metrics(w: W) -> list[str]:
    (w.init / "metrics-train.jsonl").write_text("{\"step\": 10, \"test_acc\"\n")
    return ["report", "--run", str(w.init), "--out", str(w.tmp / "report")]


def _corrupt_masks_json(w: W) -> list[str]:
    (w.init / "masks.json").write_text("[1, 2")
    return ["report", "--run", str(w.init), "--out", str(w.tmp / "report")]


def _sweep_named(w: W, name: str) -> list[str]:
    path = w.tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "name": name, "output": {"root": str(w.root)},
                                    "grid": {"seed": [0, 1]}}))
    return ["sweep", str(path), "-q"]


CASES: dict[str, Case] = {
    # --- results stores: refused read-only, naming the file ---
    "store-results-corrupt": Case("store", "`prunekit results --store` on 4 KiB of random bytes",
                                  lambda w: ["results", "--store", str(w.file("r.sqlite", _rand()))],
                                  "not a prunekit results store"),
    "store-results-empty": Case("store", "`prunekit results --store` on an empty file",
                                lambda w: ["results", "--store", str(w.file("r.sqlite"))], "not a prunekit results store"),
    "store-results-foreign": Case("store", "`prunekit results --store` on another program's SQLite file",
                                  lambda w: ["results", "--store", str(_foreign(w.tmp / "r.sqlite",
                                             "CREATE TABLE users (id INTEGER, email TEXT);"))],
                                  "not a prunekit results store"),
    "store-results-foreign-runs": Case("store", "`prunekit results --store` on an SQLite file with its own `runs` table",
                                       lambda w: ["results", "--store", str(_foreign(w.tmp / "r.sqlite",
                                                  "CREATE TABLE runs (id INTEGER PRIMARY KEY, cmd TEXT);"
                                                  "INSERT INTO runs VALUES (1, 'ls');"))],
                                       "not a prunekit results store"),
    "store-results-directory": Case("store", "`prunekit results --store` on a directory",
                                    lambda w: ["results", "--store", str(w.root)], "is a directory"),
    "store-results-newer": Case("store", "`prunekit results --store` on a store with a newer schema version (99)",
                                lambda w: ["results", "--store", str(_newer_store(w))], "schema version 99"),
    "store-results-torn": Case("store", "`prunekit results --store` on a prunekit store cut after its second page",
                               lambda w: ["results", "--store", str(_store_cut(w))], "damaged"),
    "store-report-corrupt": Case("store", "`prunekit report --store` on 4 KiB of random bytes",
                                 lambda w: ["report", "--store", str(w.file("r.sqlite", _rand())), "--out",
                                            str(w.tmp / "rep")], "not a prunekit results store"),
    "store-report-empty": Case("store", "`prunekit report --store` on an empty file",
                               lambda w: ["report", "--store", str(w.file("r.sqlite")), "--out", str(w.tmp / "rep")],
                               "not a prunekit results store"),
    "store-report-foreign": Case("store", "`prunekit report --store` on another program's SQLite file",
                                 lambda w: ["report", "--store", str(_foreign(w.tmp / "r.sqlite",
                                            "CREATE TABLE notes (t TEXT);")), "--out", str(w.tmp / "rep")],
                                 "not a prunekit results store"),
    "store-report-directory": Case("store", "`prunekit report --store` on a directory",
                                   lambda w: ["report", "--store", str(w.root)], "is a directory"),
    "store-run-corrupt": Case("store", "`prunekit run output.store=` 4 KiB of random bytes (a new run)",
                              lambda w: w.run("seed=5", f"output.store={w.file('r.sqlite', _rand())}"),
                              "not a prunekit results store"),
    "store-run-foreign": Case("store", "`prunekit run output.store=` an SQLite file with its own `runs` table",
                              lambda w: w.run("seed=5", "output.store=" + str(_foreign(
                                  w.tmp / "r.sqlite", "CREATE TABLE runs (id INTEGER, cmd TEXT);"))),
                              "not a prunekit results store"),
    "store-run-directory": Case("store", "`prunekit run output.store=` a directory",
                                lambda w: w.run("seed=5", f"output.store={w.tmp}"), "is a directory"),
    "store-run-newer": Case("store", "`prunekit run output.store=` a store with a newer schema version",
                            lambda w: w.run("seed=5", f"output.store={_newer_store(w)}"), "schema version 99"),
    # --- output locations and run directories ---
    "rundir-root-file": Case("rundir", "`output.root` is a regular file",
                             lambda w: w.run("seed=5") [:2] + [f"output.root={w.file('plain', b'x')}", "seed=5"],
                             "output.root"),
    "rundir-root-dangling": Case("rundir", "`output.root` is a dangling symbolic link",
                                 lambda w: w.run()[:2] + [f"output.root={_dangling(w)}", "seed=5"], "output.root"),
    "rundir-root-under-file": Case("rundir", "`output.root` is a folder inside a regular file",
                                   lambda w: w.run()[:2] + [f"output.root={_out_under_file(w)}"], "output.root"),
    "rundir-export-out-file": Case("rundir", "`prunekit export RUN --out` an existing regular file",
                                   lambda w: ["export", str(w.init), "--out", str(w.file("plain", b"x"))], "--out"),
    "rundir-export-out-under-file": Case("rundir", "`prunekit export RUN --out` a folder inside a regular file",
                                         lambda w: ["export", str(w.init), "--out", _out_under_file(w)], "--out"),
    "rundir-report-out-file": Case("rundir", "`prunekit report --out` an existing regular file",
                                   lambda w: ["report", "--store", str(w.store), "--out", str(w.file("plain", b"x"))],
                                   "--out"),
    "rundir-report-run-out-file": Case("rundir", "`prunekit report --run RUN --out` an existing regular file",
                                       lambda w: ["report", "--run", str(w.init), "--out", str(w.file("plain", b"x"))],
                                       "--out"),
    "rundir-slurm-folder-file": Case("rundir", "`prunekit slurm --folder` an existing regular file",
                                     lambda w: ["slurm", str(w.recipe), f"output.root={w.root}", "--local", "--folder",
                                                str(w.file("plain", b"x"))], "--folder"),
    "rundir-result-corrupt": Case("rundir", "a finished run whose `result.json` is cut short",
                                  lambda w: [_half(w.init / "result.json"), w.run()][1], "result.json"),
    "rundir-result-not-a-row": Case("rundir", "a finished run whose `result.json` is `[]`",
                                    lambda w: [(w.init / "result.json").write_text("[]"), w.run()][1], "result.json"),
    "rundir-result-other-run": Case("rundir", "a finished run whose `result.json` is another run's",
                                    _wrong_result, "result.json"),
    "rundir-result-directory": Case("rundir", "a run whose `result.json` is a directory",
                                    lambda w: [(w.init / "result.json").unlink(), (w.init / "result.json").mkdir(),
                                               w.run()][2], "result.json"),
    "rundir-no-prune-json": Case("rundir", "a partial run (checkpoint, no `result.json`) without `prune.json`",
                                 lambda w: [(_partial(w.init) / "prune.json").unlink(), w.run()][1], "prune.json"),
    "rundir-prune-json-corrupt": Case("rundir", "a partial after-training run whose `prune.json` is not JSON",
                                      lambda w: [(_partial(w.after) / "prune.json").write_text("{"), w.run_after()][1],
                                      "prune.json"),
    "rundir-pretrain-summary-corrupt": Case("rundir", "a new after-training run whose cached pretraining "
                                            "`summary.json` is cut short", _corrupt_summary, "summary.json"),
    "rundir-config-edited": Case("rundir", "a partial run whose `config.yaml` was edited by hand (`train.lr`)",
                                 _edited_config, "train.lr"),
    "rundir-config-edited-finished": Case("rundir", "a finished run whose `config.yaml` was edited by hand "
                                          "(`data.batch_size`)", _edited_finished_config, "data.batch_size"),
    "rundir-config-not-yaml": Case("rundir", "a partial run whose `config.yaml` is not YAML",
                                   lambda w: [(_partial(w.init) / "config.yaml").write_text("model: {name"), w.run()][1],
                                   "config.yaml"),
    "rundir-checkpoint-directory": Case("rundir", "a partial run whose `checkpoint-train.pt` is a directory",
                                        lambda w: [(_partial(w.init) / "checkpoint-train.pt").unlink(),
                                                   (w.init / "checkpoint-train.pt").mkdir(), w.run()][2],
                                        "checkpoint-train.pt"),
    "rundir-measure-no-masks": Case("rundir", "`prunekit measure` of a pruned run without `masks.safetensors`",
                                    _no_masks_measure, "masks.safetensors"),
    "rundir-export-no-model": Case("rundir", "`prunekit export` of a run without `model.safetensors`",
                                   _no_model_export, "model.safetensors"),
    "rundir-report-metrics-corrupt": Case("rundir", "`prunekit report --run` of a run whose `metrics-train.jsonl` "
                                          "has a torn line", _corrupt_metrics, "metrics-train.jsonl"),
    "rundir-report-masks-json-corrupt": Case("rundir", "`prunekit report --run` of a run whose `masks.json` is not "
                                             "JSON", _corrupt_masks_json, "masks.json"),
    "rundir-export-not-a-run": Case("rundir", "`prunekit export` of a folder that is neither a run nor a model name",
                                    lambda w: ["export", str(w.tmp), "--out", str(w.tmp / "out")], "allowed"),
    # --- path parts from user input ---
    "paths-name-parent": Case("paths", "`prunekit run RECIPE name=../../x`", lambda w: w.run("name=../../x"), "name="),
    "paths-name-absolute": Case("paths", "`prunekit run RECIPE name=<an absolute path>`",
                                lambda w: w.run(f"name={w.tmp / 'abs'}"), "name="),
    "paths-name-slash": Case("paths", "`prunekit run RECIPE name=a/b`", lambda w: w.run("name=a/b"), "name="),
    "paths-name-dotdot": Case("paths", "`prunekit run RECIPE name=..`", lambda w: w.run("name=.."), "name="),
    "paths-name-long": Case("paths", "`prunekit run RECIPE name=<300 characters>`", lambda w: w.run("name=" + "n" * 300),
                            "name="),
    "paths-name-empty": Case("paths", "`prunekit run RECIPE name=`", lambda w: w.run("name="), "name="),
    "paths-name-reserved": Case("paths", "`prunekit run RECIPE name=_pretrained` (the cache folder's name)",
                                lambda w: w.run("name=_pretrained"), "name="),
    "paths-name-nul": Case("paths", "`prunekit run RECIPE name=a<NUL>b`", lambda w: w.run("name=a\x00b"), "name="),
    "paths-name-newline": Case("paths", "`prunekit run RECIPE name=\"a\\nb\"`", lambda w: w.run('name="a\\nb"'), "name="),
    "paths-sweep-name": Case("paths", "a sweep file with `name: ../../escaped`", lambda w: _sweep_named(w, "../../escaped"),
                             "name="),
    "paths-symlinked-recipe-dir": Case("paths", "`<root>/<name>` is a symbolic link to a folder outside output.root",
                                       _symlinked_recipe_dir, "outside"),
    # --- numbers, counts and sizes ---
    "numbers-seed-huge": Case("numbers", "`seed=2**70`", lambda w: w.run(f"seed={2 ** 70}"), "seed="),
    "numbers-seed-negative": Case("numbers", "`seed=-1`", lambda w: w.run("seed=-1"), "seed="),
    "numbers-duration-huge": Case("numbers", "`train.duration=1000000000000it`",
                                  lambda w: w.run("train.duration=1000000000000it"), "train.duration"),
    "numbers-duration-epochs-huge": Case("numbers", "`train.duration=100000000ep`",
                                         lambda w: w.run("train.duration=100000000ep"), "train.duration"),
    "numbers-warmup-negative": Case("numbers", "`train.warmup_steps=-5`", lambda w: w.run("train.warmup_steps=-5"),
                                    "train.warmup_steps"),
    "numbers-finetune-warmup-negative": Case("numbers", "`finetune.warmup_steps=-1`",
                                             lambda w: w.run_after("finetune.warmup_steps=-1"), "finetune.warmup_steps"),
    "numbers-lr-inf": Case("numbers", "`train.lr=.inf`", lambda w: w.run("train.lr=.inf"), "train.lr"),
    "numbers-weight-decay-inf": Case("numbers", "`train.weight_decay=.inf`", lambda w: w.run("train.weight_decay=.inf"),
                                     "train.weight_decay"),
    "numbers-betas": Case("numbers", "`train.betas=[1.5, 0.9]`", lambda w: w.run("train.betas=[1.5, 0.9]"), "train.betas"),
    "numbers-label-smoothing": Case("numbers", "`train.label_smoothing=1.5`",
                                    lambda w: w.run("train.label_smoothing=1.5"), "train.label_smoothing"),
    "numbers-eval-every-huge": Case("numbers", "`train.eval_every=10**15`", lambda w: w.run(f"train.eval_every={10**15}"),
                                    "train.eval_every"),
    "numbers-milestones-negative": Case("numbers", "`train.schedule=multistep train.milestones=[-3]`",
                                        lambda w: w.run("train.schedule=multistep", "train.milestones=[-3]"),
                                        "train.milestones"),
    "numbers-batch-size-huge": Case("numbers", "`data.batch_size=10**12`", lambda w: w.run(f"data.batch_size={10**12}"),
                                    "data.batch_size"),
    "numbers-measure-repeats": Case("numbers", "`prunekit measure mlp --latency --repeats 0`",
                                    lambda w: _measure(w, "--latency", "--repeats", "0"), "--repeats"),
    "numbers-measure-threads": Case("numbers", "`prunekit measure mlp --threads -3`",
                                    lambda w: _measure(w, "--threads", "-3"), "--threads"),
    "numbers-measure-batch-sizes": Case("numbers", "`prunekit measure mlp --latency --batch-sizes 0`",
                                        lambda w: _measure(w, "--latency", "--batch-sizes", "0"), "--batch-sizes"),
    "numbers-measure-num-classes": Case("numbers", "`prunekit measure mlp --num-classes 0`",
                                        lambda w: _measure(w, "--num-classes", "0"), "--num-classes"),
    "numbers-measure-input-shape": Case("numbers", "`prunekit measure mlp --input-shape 0`",
                                        lambda w: _measure(w, "--input-shape", "0"), "--input-shape"),
    "numbers-measure-input-shape-other": Case("numbers", "`prunekit measure mlp --input-shape 3 32 32` (the MLP takes "
                                              "1x8x8)", lambda w: _measure(w, "--input-shape", "3", "32", "32"),
                                              "--input-shape 3 32 32"),
    "numbers-export-num-classes": Case("numbers", "`prunekit export mlp --num-classes -2 --out OUT`",
                                       lambda w: ["export", "mlp", "--num-classes", "-2", "--out", str(w.tmp / "o")],
                                       "--num-classes"),
    "numbers-sweep-workers-zero": Case("numbers", "`prunekit sweep RECIPE --workers 0`",
                                       lambda w: ["sweep", str(w.recipe), "--workers", "0"], "--workers"),
    "numbers-sweep-workers-huge": Case("numbers", "`prunekit sweep RECIPE --workers 100000`",
                                       lambda w: ["sweep", str(w.recipe), "--workers", "100000"], "--workers"),
    "numbers-slurm-nodes": Case("numbers", "`prunekit slurm RECIPE --nodes 0`",
                                lambda w: ["slurm", str(w.recipe), "--nodes", "0", "--folder", str(w.tmp / "s")],
                                "--nodes"),
    "numbers-slurm-time": Case("numbers", "`prunekit slurm RECIPE --time -5`",
                               lambda w: ["slurm", str(w.recipe), "--time", "-5", "--folder", str(w.tmp / "s")],
                               "--time"),
    # --- mask files ---
    "masks-float-fraction": Case("checkpoint", "`prunekit measure mlp --masks` a float mask file holding 0.37",
                                 lambda w: _measure(w, "--masks", str(_mask_file(w, dtype=torch.float32, fill=0.37))),
                                 "0.37"),
    "masks-empty": Case("checkpoint", "`prunekit measure mlp --masks` a mask file with no tensors",
                        lambda w: _measure(w, "--masks", str(_mask_file(w, values={}))), "no mask"),
    "masks-uint8-two": Case("checkpoint", "`prunekit measure mlp --masks` a uint8 mask holding 2",
                            lambda w: _measure(w, "--masks", str(_mask_file(w, fill=2))), "0 or 1"),
    "masks-float-nan": Case("checkpoint", "`prunekit measure mlp --masks` a float mask holding NaN",
                            lambda w: _measure(w, "--masks", str(_mask_file(w, dtype=torch.float32, fill=float("nan")))),
                            "0 or 1"),
    "masks-int-negative": Case("checkpoint", "`prunekit measure mlp --masks` an int64 mask holding -1",
                               lambda w: _measure(w, "--masks", str(_mask_file(w, dtype=torch.int64, fill=-1))), "0 or 1"),
    "masks-checkpoint-module": Case("checkpoint", "resume a run whose `checkpoint-train.pt` is a whole pickled "
                                    "`nn.Linear` (`torch.save(module)`)", _pickled_module_checkpoint, "state_dict()"),
}


def _dangling(w: W) -> Path:
    link = w.tmp / "dangling"
    link.symlink_to(w.tmp / "nowhere")
    return link


@pytest.mark.parametrize("case", list(CASES))
def test_surface_case_is_one_line_exit_2_and_writes_nothing(capsys, finished, tmp_path, case):
    c = CASES[case]
    w = W(tmp_path / "w")
    shutil.copytree(finished, w.tmp, symlinks=True)
    argv = c.argv(w)
    before = tree(tmp_path)
    with time_limit(60):  # a bound that is not checked would start a run of 10^12 steps
        line = cli_error(capsys, argv)
    assert c.expect in line, line
    changes = unchanged(before, tree(tmp_path))
    assert not changes, changes
    if case == "masks-checkpoint-module":
        assert "weights_only" not in line
    record(c.area, c.tried, f"exit 2, nothing written: `{line}`", tmp_path=w.tmp)


def test_force_redoes_a_damaged_run(capsys, finished, tmp_path):
    """The fix the damaged-run errors name works: ``--force`` reruns it from scratch."""
    from prunekit.cli import main

    w = W(tmp_path / "w")
    shutil.copytree(finished, w.tmp, symlinks=True)
    expected = json.loads((w.init / "result.json").read_text())
    _half(w.init / "result.json")
    assert main([*w.run(), "--force", "-q"]) == 0
    capsys.readouterr()
    result = json.loads((w.init / "result.json").read_text())
    assert result["final_acc"] == expected["final_acc"] and result["nonzero_params"] == expected["nonzero_params"]
    record("rundir", "`--force` on the run whose `result.json` was cut short",
           f"exit 0; the run was redone from scratch and ended with the same accuracy ({result['final_acc']:.2f})")


def test_reading_a_store_never_writes_it(capsys, finished, tmp_path):
    """``results`` and ``report`` on prunekit's own store (and on one of an older version without the schema
    marker) leave the file byte-identical and create no -wal/-shm files."""
    from prunekit.cli import main
    from prunekit.experiments.store import COLUMNS

    w = W(tmp_path / "w")
    shutil.copytree(finished, w.tmp, symlinks=True)
    con = sqlite3.connect(w.store)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for p in w.root.glob("results.sqlite-*"):
        p.unlink()
    old = w.tmp / "old.sqlite"
    with sqlite3.connect(old) as con:
        con.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, recipe TEXT, method TEXT, final_acc REAL, "
                    "finished_at REAL)")
        con.execute("INSERT INTO runs VALUES ('r1', 'tiny', 'dense', 91.5, 1.0)")
    con.close()
    before = tree(w.tmp)
    assert main(["results", "--store", str(w.store)]) == 0
    assert main(["results", "--store", str(old)]) == 0
    out, _ = capsys.readouterr()
    assert "random" in out and "91.50" in out
    rows = pk.experiments.ResultsStore(old).rows()
    assert set(rows[0]) == set(COLUMNS) and rows[0]["final_acc"] == 91.5
    assert main(["report", "--store", str(w.store), "--out", str(w.tmp / "rep"), "--no-plots", "--no-html"]) == 0
    capsys.readouterr()
    changes = unchanged(before, {k: v for k, v in tree(w.tmp).items() if not k.startswith("rep")})
    assert not changes, changes
    record("store", "`prunekit results` and `prunekit report` on prunekit's store, and `results` on a store of an "
           "older version (no schema marker, 5 columns)",
           "both read; the store files are byte-identical afterwards and no -wal/-shm file appeared (reading opens "
           "the file read-only); the old store's rows show every current column (missing ones empty)")


def test_float_masks_of_exactly_0_and_1_load(finished, tmp_path):
    w = W(tmp_path)
    (w.tmp / "runs").mkdir()
    path = _mask_file(w, dtype=torch.float32, fill=0.0)
    masks = pk.MaskSet.load(path, pk.models.create("mlp"))
    assert masks.nnz() == masks.numel() - 1
    record("checkpoint", "`MaskSet.load` of a float32 mask file holding only 0.0 and 1.0",
           f"accepted as boolean masks ({masks.numel() - masks.nnz()} weight pruned)")
