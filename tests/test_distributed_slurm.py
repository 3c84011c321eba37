"""The SLURM launcher (prunekit.experiments.slurm) with submitit's local executor: one job per group of runs
that share caches; a job with two tasks trains its run data-parallel over them (gloo on the CPU)."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

pytest.importorskip("submitit")

from prunekit.cli import main  # noqa: E402
from prunekit.experiments.slurm import submit_sweep  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.experiments.sweep import load_sweep  # noqa: E402

SWEEP = """\
name: tiny
seed: 0
model: {name: mlp}
data: {name: sklearn_digits, batch_size: 64, test_batch_size: 512, augment: false}
train: {duration: 2ep, optimizer: sgd, lr: 0.05, momentum: 0.9}
output: {root: %s, save_model: false}
grid:
  method:
    - {name: dense}
    - {name: magnitude, sparsity: 0.8, when: after, allocation: global}
    - {name: granet, sparsity: 0.8, initial_sparsity: 0.5, update_frequency: 10, final_prune_epoch: 1}
"""


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_local_executor_runs_one_job_per_group(tmp_path, capsys):
    root = tmp_path / "runs"
    (tmp_path / "tiny.yaml").write_text(SWEEP % root)
    assert main(["slurm", str(tmp_path / "tiny.yaml"), "--local", "--wait", "--folder", str(tmp_path / "jobs")]) == 0
    out = capsys.readouterr().out
    assert "tiny: 3 runs in 2 jobs" in out  # dense + after-training magnitude share the pretraining
    rows = sqlite3.connect(root / "results.sqlite").execute("select method, status from runs").fetchall()
    assert sorted(rows) == [("dense", "finished"), ("granet", "finished"), ("magnitude", "finished")]
    assert len(list((root / "_pretrained").iterdir())) == 1  # trained once, in one job


def test_a_two_task_job_trains_data_parallel(tmp_path):
    root = tmp_path / "runs"
    (tmp_path / "tiny.yaml").write_text(SWEEP % root)
    granet = "{name: granet, sparsity: 0.8, initial_sparsity: 0.5, update_frequency: 10, final_prune_epoch: 1}"
    sweep = load_sweep(str(tmp_path / "tiny.yaml"), [f"grid.method=[{granet}]"])
    (job,) = submit_sweep(sweep, tmp_path / "jobs", cluster="local", tasks_per_node=2, timeout_min=10)
    rows = job.results()  # one list of rows per task
    assert len(rows) == 2 and rows[0][0]["status"] == rows[1][0]["status"] == "finished"
    run_dir = next((root / "tiny").iterdir())
    log = [json.loads(line) for line in (run_dir / "mask-checksums-train.jsonl").read_text().splitlines()]
    steps = log[-1]["step"]  # the last segment: the end of the 2 epochs
    assert steps > 30 and [r["step"] for r in log if r["event"] == "update"] == list(range(10, steps + 1, 10))
    assert all(r["checksums"][0] == r["checksums"][1] for r in log)


def test_one_gpu_per_task(tmp_path):
    (tmp_path / "tiny.yaml").write_text(SWEEP % (tmp_path / "runs"))
    with pytest.raises(ConfigError, match="tasks_per_node=4 with gpus_per_node=2"):
        submit_sweep(load_sweep(str(tmp_path / "tiny.yaml")), tmp_path, cluster="local", tasks_per_node=4,
                     gpus_per_node=2)
    assert not os.path.exists(tmp_path / "runs")
