"""``prunekit sweep --pack K``: the same store rows, report rows, run files and metrics as an unpacked
sweep (real MNIST, the pai_mnist recipe on a reduced grid; tiny digits sweeps for the other families);
methods that cannot pack say why in one line and run unpacked; bad combinations exit 2."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.experiments import build_config
from prunekit.experiments.packing import PackSession, pack_refusal
from prunekit.experiments.store import ResultsStore
from prunekit.experiments.sweep import run_sweep
from prunekit.report.tables import aggregate

from .conftest import MNIST_DIR, require_mnist

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
VARYING = {"wall_time", "finished_at", "run_dir", "config"}  # timings and where the files are


def _rows(root: Path) -> dict[str, dict]:
    rows = ResultsStore(root / "results.sqlite").rows()
    return {r["run_id"]: {k: v for k, v in r.items() if k not in VARYING} for r in rows}


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "wall_time" not in k} for line in path.read_text().splitlines()]


def _same_files(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".safetensors"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*")
                                     if p.is_file() and p.suffix in (".jsonl", ".safetensors"))
    for f in files:
        if f.suffix == ".jsonl":
            assert _records(a / f) == _records(b / f), f
        else:
            ta, tb = load_file(str(a / f)), load_file(str(b / f))
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f


def test_pai_mnist_pack_8_gives_the_unpacked_report_rows(tmp_path, capsys):
    require_mnist()
    grid = ["grid.method=[{name: snip}, {name: random, allocation: erk}]", "grid.method.sparsity=[0.9, 0.99]",
            "grid.seed=[0, 1]", "train.duration=20it", "train.eval_every=20", "data.test_batch_size=5000",
            f"data.root={MNIST_DIR}"]
    for name, extra in (("plain", []), ("packed", ["--pack", "8"])):
        assert main(["sweep", str(RECIPES / "pai_mnist.yaml"), *grid, f"output.root={tmp_path / name}", "-q",
                     *extra]) == 0
    out = capsys.readouterr().out
    assert "8 runs finished, 0 skipped" in out and "failed" in out
    plain, packed = _rows(tmp_path / "plain"), _rows(tmp_path / "packed")
    assert len(plain) == 8 and plain == packed  # accuracies, sparsities, FLOPs ... identical
    assert aggregate(list(plain.values())) == aggregate(list(packed.values()))
    _same_files(tmp_path / "plain", tmp_path / "packed")


TINY = {
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "sklearn_digits", "batch_size": 64, "test_batch_size": 512, "augment": False},
    "train": {"duration": "2ep", "lr": 0.05},
    "finetune": {"duration": "1ep", "lr": 0.01},
}
METHODS = [{"name": "dense"}, {"name": "magnitude", "when": "after", "sparsity": 0.8},
           {"name": "lap", "sparsity": 0.8}, {"name": "rigl", "sparsity": 0.8, "update_frequency": 5},
           {"name": "granet", "sparsity": 0.8, "update_frequency": 5}, {"name": "bip", "sparsity": 0.8},
           {"name": "imp", "sparsity": 0.5, "prune_fraction": 0.3}]


def _configs(root: Path):
    return [build_config({**TINY, "name": "s", "seed": seed, "method": m, "output": {"root": str(root)}})
            for seed in (0, 1) for m in METHODS]


def test_every_family_packs_in_a_sweep_and_the_others_run_unpacked(tmp_path):
    messages = []
    plain = run_sweep(_configs(tmp_path / "plain"))
    packed = run_sweep(_configs(tmp_path / "packed"), pack=4, on_message=messages.append)
    assert [e.status for e in plain] == [e.status for e in packed] == ["finished"] * len(plain)
    assert _rows(tmp_path / "plain") == _rows(tmp_path / "packed")
    _same_files(tmp_path / "plain", tmp_path / "packed")
    refused = [m for m in messages if "does not pack" in m]
    assert len(refused) == 4 and all("\n" not in m for m in refused)  # bip and imp, two seeds each
    assert sum("bip:" in m for m in refused) == 2 and sum("IMP chain" in m for m in refused) == 2
    # a second packed sweep skips everything
    again = run_sweep(_configs(tmp_path / "packed"), pack=4)
    assert {e.status for e in again} == {"skipped"}


def test_lanes_pack_what_is_parked_together(tmp_path):
    cfgs = [build_config({**TINY, "name": "s", "seed": s, "method": {"name": "snip", "sparsity": 0.5},
                          "output": {"root": str(tmp_path)}}) for s in range(5)]
    sizes = []
    orig = PackSession._train

    def spy(self, trainers, lanes):
        sizes.append(len(trainers))
        return orig(self, trainers, lanes)

    PackSession._train = spy
    try:
        events = run_sweep(cfgs, pack=2)
    finally:
        PackSession._train = orig
    assert [e.status for e in events] == ["finished"] * 5
    assert sizes == [2, 2, 1]  # two lanes: five one-run groups in packs of two


@pytest.mark.parametrize("method,needle", [({"name": "bip", "sparsity": 0.5}, "bi-level"),
                                           ({"name": "hydra", "sparsity": 0.5}, "importance scores"),
                                           ({"name": "imp", "sparsity": 0.5}, "IMP chain"),
                                           ({"name": "lap", "rates": 0.2, "pruning": "iterative",
                                             "round": 2, "retrain_steps": 10}, "fresh optimizer")])
def test_methods_that_cannot_pack_say_why(method, needle):
    cfg = build_config({**TINY, "method": method})
    why = pack_refusal(cfg)
    assert why is not None and needle in why and "\n" not in why
    assert pack_refusal(build_config({**TINY, "method": {"name": "set", "sparsity": 0.5}})) is None
    assert "compile" in pack_refusal(build_config({**TINY, "train": {**TINY["train"], "compile": True}}))


def test_cli_refuses_pack_with_workers_and_bad_sizes(tmp_path, capsys):
    recipe = RECIPES / "pai_mnist.yaml"
    for extra in (["--pack", "2", "--workers", "2"], ["--pack", "0"]):
        assert main(["sweep", str(recipe), f"output.root={tmp_path}", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "pack" in err
    assert not (tmp_path / "results.sqlite").exists()
