"""Faults lose nothing: SIGKILL at a random step or during a checkpoint write, NaN/Inf, layer collapse.

The kill tests run ``prunekit run`` in real subprocesses that SIGKILL themselves at a chosen point (a
training step drawn from a seeded generator, or inside the atomic checkpoint write); the rerun must
resume and end bit-identical (CPU) to an uninterrupted run. Checkpoints are written at segment ends
(here every 7 steps, so segments straddle epochs and a kill lands mid-segment and mid-epoch).
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import prunekit as pk
from prunekit.errors import LayerCollapseError, NumericError
from prunekit.train import Trainer, TrainConfig, load_checkpoint
from tests.reliability import cli_error, record

STEPS_PER_EPOCH, EPOCHS, EVAL_EVERY = 45, 3, 7  # 1437 digits / batch 32
TOTAL = STEPS_PER_EPOCH * EPOCHS
RECIPE = {
    "name": "faults",
    "seed": 3,
    "model": {"name": "mlp", "kwargs": {"hidden": [32, 32]}},
    "data": {"name": "sklearn_digits", "batch_size": 32, "test_batch_size": 512, "augment": True},
    "method": {"name": "random", "sparsity": 0.8, "allocation": "erk"},
    "train": {"duration": f"{EPOCHS}ep", "lr": 0.05, "momentum": 0.9, "schedule": "cosine", "eval_every": EVAL_EVERY},
}

# Runs the CLI after arranging a SIGKILL of this very process:
#   step N    -- at the start of training step N
#   torn N    -- in the N-th checkpoint write, after half of the temporary file is written
#   rename N  -- in the N-th checkpoint write, after the temporary file is complete and fsynced, before its rename
KILLER = r"""
import io, os, signal, sys
import torch
from prunekit.cli import main
from prunekit.train import trainer
from prunekit.utils import io as pkio

mode, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
writes = [0]

def counted(path):
    if str(path).endswith("checkpoint-train.pt") or ".checkpoint-train.pt." in str(path):
        writes[0] += 1
        return writes[0] == n
    return False

if mode == "step":
    original_step = trainer.Trainer._train_step
    def _train_step(self, x, y, step, autocast):
        if step == n:
            die()
        return original_step(self, x, y, step, autocast)
    trainer.Trainer._train_step = _train_step
elif mode == "torn":
    original_save = torch.save
    def save(obj, f, *args, **kwargs):
        if counted(f):
            buf = io.BytesIO()
            original_save(obj, buf, *args, **kwargs)
            with open(f, "wb") as fh:
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            die()
        return original_save(obj, f, *args, **kwargs)
    torch.save = save
elif mode == "rename":
    original_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if counted(dst):
            die()
        return original_replace(src, dst, *args, **kwargs)
    pkio.os.replace = replace
sys.exit(main(argv))
"""


def _cli(recipe, root, *kill) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = ["run", str(recipe), f"output.root={root}", "-q"]
    cmd = [sys.executable, "-c", KILLER, *map(str, kill), *argv] if kill else [sys.executable, "-m", "prunekit", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _run_dir(root):
    (d,) = [p for p in (root / "faults").iterdir() if p.is_dir()]
    return d


def _killed(proc) -> None:
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


def _boundaries() -> list[int]:
    return sorted(set(range(EVAL_EVERY, TOTAL, EVAL_EVERY)) | {TOTAL})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the recipe (recipe file, run directory)."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = tmp / "faults.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    proc = _cli(recipe, tmp / "runs")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return recipe, _run_dir(tmp / "runs")


def _assert_identical(run_dir, ref_dir) -> dict:
    for name in ("masks.safetensors", "model.safetensors"):
        ref, got = load_file(str(ref_dir / name)), load_file(str(run_dir / name))
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
    lines = (run_dir / "metrics-train.jsonl").read_text().splitlines()
    assert lines == (ref_dir / "metrics-train.jsonl").read_text().splitlines()
    assert len(lines) == len(_boundaries())
    result, ref_result = (json.loads((d / "result.json").read_text()) for d in (run_dir, ref_dir))
    for key in ("final_acc", "best_acc", "achieved_sparsity", "nonzero_params"):
        assert result[key] == ref_result[key], key
    assert not list(run_dir.glob(".checkpoint-train.pt.*.tmp")), "a stale temporary file was left"
    return result


def test_sigkill_at_a_random_step_resumes_bit_identical(reference, tmp_path):
    recipe, ref_dir = reference
    seed = int(os.environ.get("PRUNEKIT_KILL_SEED", "0"))
    step = random.Random(seed).randrange(2, TOTAL)  # seeded: rerun with PRUNEKIT_KILL_SEED=<seed> to repeat
    last_checkpoint = max([b for b in _boundaries() if b < step], default=0)
    print(f"kill seed {seed}: SIGKILL at training step {step} of {TOTAL}, last checkpoint at step {last_checkpoint}")
    root = tmp_path / "runs"
    _killed(_cli(recipe, root, "step", step))
    run_dir = _run_dir(root)
    assert not (run_dir / "result.json").exists()
    if last_checkpoint:
        assert load_checkpoint(run_dir / "checkpoint-train.pt")["step"] == last_checkpoint
    proc = _cli(recipe, root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _assert_identical(run_dir, ref_dir)
    record("fault", f"SIGKILL at training step {step} of {TOTAL} (seeded draw, seed {seed}; epoch "
           f"{(step - 1) // STEPS_PER_EPOCH + 1}, checkpoints every {EVAL_EVERY} steps), then the same command again",
           f"resumed from the checkpoint of step {last_checkpoint}; masks, weights, all {len(_boundaries())} metric "
           f"lines and the final accuracy ({result['final_acc']:.2f}) bit-identical to an uninterrupted run")


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(reference, tmp_path):
    recipe, ref_dir = reference
    root = tmp_path / "runs"
    # first kill: the 3rd checkpoint write dies with half of its temporary file written
    _killed(_cli(recipe, root, "torn", 3))
    run_dir = _run_dir(root)
    ckpt = run_dir / "checkpoint-train.pt"
    assert load_checkpoint(ckpt)["step"] == 2 * EVAL_EVERY
    (torn,) = run_dir.glob(".checkpoint-train.pt.*.tmp")
    assert 0 < torn.stat().st_size < ckpt.stat().st_size
    # second kill: the resumed run's 2nd write is complete and fsynced but never renamed
    _killed(_cli(recipe, root, "rename", 2))
    assert load_checkpoint(ckpt)["step"] == 3 * EVAL_EVERY
    (unrenamed,) = run_dir.glob(".checkpoint-train.pt.*.tmp")
    assert load_checkpoint(unrenamed)["step"] == 4 * EVAL_EVERY  # complete, just not in place
    proc = _cli(recipe, root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_identical(run_dir, ref_dir)
    record("fault", "SIGKILL inside a checkpoint write: once with half of the temporary file written, once "
           "after it was fsynced but before the rename",
           f"the previous checkpoint (step {2 * EVAL_EVERY}, then {3 * EVAL_EVERY}) loaded intact each time; the "
           "rerun removed the stale temporary file and ended bit-identical to an uninterrupted run")


def _nan_config(root) -> dict:
    return {**RECIPE, "name": "nan", "data": {**RECIPE["data"], "augment": False},
            "train": {"duration": "2ep", "lr": 1e6, "eval_every": 5}, "output": {"root": str(root)}}


def test_nan_loss_stops_naming_the_step_keeps_checkpoint_and_records_failure(tmp_path, capsys):
    cfg = _nan_config(tmp_path)
    with pytest.raises(NumericError) as e:
        pk.run(cfg)
    message = str(e.value)
    assert message.startswith("train: non-finite training loss at step ")
    bad = int(message.split("at step ")[1].split(";")[0])
    good = (bad - 1) // 5 * 5
    (run_dir,) = (tmp_path / "nan").iterdir()
    if good:
        assert f"the last good checkpoint (step {good}) is kept in {run_dir / 'checkpoint-train.pt'}" in message
        state = load_checkpoint(run_dir / "checkpoint-train.pt")
        assert state["step"] == good
        assert all(torch.isfinite(v).all() for v in state["model"].values())
    else:
        assert "no checkpoint was written yet" in message
    assert not (run_dir / "result.json").exists()
    con = sqlite3.connect(tmp_path / "results.sqlite")
    assert con.execute("select status, error from runs").fetchall() == [("failed", message)]
    # the command line resumes from the good checkpoint, fails at the same step: one line, exit 2
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    assert cli_error(capsys, ["run", str(recipe)]) == f"prunekit: error: {message}"
    assert con.execute("select count(*) from runs").fetchone() == (1,)
    record("fault", "`train.lr=1e6`: the training loss overflows",
           f"stopped at the end of the segment: `{message}`; the store row has status `failed` and this "
           "error; running the command again fails the same way (exit 2)", tmp_path=tmp_path)


def test_inf_weight_with_a_finite_loss_is_caught_at_the_segment_end(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    ckpt = tmp_path / "ck.pt"
    trainer = Trainer(model, loader, loader, TrainConfig(duration="3ep", lr=0.1), checkpoint_path=ckpt)

    def poison(optimizer, args, kwargs):
        if trainer.step == 8:  # the last step of epoch 2: its loss was finite, the update is not
            with torch.no_grad():
                model[2].weight[0, 0] = float("inf")

    trainer.optimizer.register_step_post_hook(poison)
    with pytest.raises(NumericError) as e:
        trainer.fit()
    assert str(e.value) == (f"train: non-finite values in weight '2.weight' at step 8 (segment from step 5); "
                            f"the last good checkpoint (step 4) is kept in {ckpt}")
    assert load_checkpoint(ckpt)["step"] == 4
    record("fault", "an update makes a weight +Inf at the last step of a segment (the step's loss is finite)",
           f"`{e.value}`", tmp_path=tmp_path)


def test_disconnecting_pai_mask_is_reported_before_training(tmp_path):
    cfg = {**RECIPE, "name": "collapse", "method": {"name": "magnitude", "when": "init", "allocation": "global",
                                                    "sparsity": 0.995}, "output": {"root": str(tmp_path)}}
    with pytest.raises(LayerCollapseError) as e:
        pk.run(cfg)
    message = str(e.value)
    assert message.startswith("layer collapse: 3 of 3 layers keep no effective weight (the network has no "
                              "input->output path): layers.0.weight, layers.2.weight, layers.4.weight")
    (run_dir,) = (tmp_path / "collapse").iterdir()
    assert [p.name for p in run_dir.iterdir()] == ["config.yaml"]  # no checkpoint, no metrics: nothing trained
    row = sqlite3.connect(tmp_path / "results.sqlite").execute("select status, error from runs").fetchone()
    assert row == ("failed", message)
    record("fault", "magnitude pruning at initialization, one global threshold, 99.5 % sparsity (empties a layer)",
           f"stopped before the first training step: `{message}`; store row `failed`")
