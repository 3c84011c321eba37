"""A 12-run sweep killed with SIGKILL mid-way and started again finishes with exactly 12 result rows: nothing
lost, nothing duplicated, no run's metrics written twice; with worker processes, killing the parent alone
leaves no orphaned worker behind."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.reliability import record

EPOCHS, FINETUNE = 6, 2
SWEEP = {
    "name": "sweepkill",
    "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
    "data": {"name": "sklearn_digits", "batch_size": 64, "test_batch_size": 512, "augment": False},
    "train": {"duration": f"{EPOCHS}ep", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
    "finetune": {"duration": f"{FINETUNE}ep", "lr": 0.01, "momentum": 0.9},
    "grid": {
        # random at init: one run per group; magnitude after training: the two sparsities of a seed share
        # (and must not concurrently write) one dense pretraining
        "method": [{"name": "random", "allocation": "erk"}, {"name": "magnitude", "when": "after"}],
        "method.sparsity": [0.5, 0.9],
        "seed": [0, 1, 2],
    },
}


def _cmd(sweep, root, workers):
    return [sys.executable, "-m", "prunekit", "sweep", str(sweep), f"output.root={root}", "-q", "--workers", str(workers)]


def _store_rows(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path, timeout=5) as con:
            return con.execute("SELECT run_id, status FROM runs").fetchall()
    except sqlite3.OperationalError:  # the table is being created
        return []


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_sweep_restarts_to_exactly_12_rows(tmp_path):
    """With two workers (a sequential sweep runs the same runner in one process: tests/test_reliability_faults.py)."""
    workers = 2
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the worker processes")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    root = tmp_path / "runs"
    store = root / "results.sqlite"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(_cmd(sweep, root, workers), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, children = time.time() + 120, []
    while time.time() < deadline and len(_store_rows(store)) < 3 and proc.poll() is None:
        if not children:
            children = [c for c in _children(proc.pid) if _alive(c)]
        time.sleep(0.02)
    children = sorted(set(children) | set(_children(proc.pid)))
    proc.send_signal(signal.SIGKILL)  # the parent only: its workers must die with it
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    before = _store_rows(store)
    assert 3 <= len(before) < 12, f"not killed mid-way: {len(before)} rows"
    assert children, "no worker process seen"
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not any(_alive(c) for c in children), "a worker outlived the killed sweep"

    done = subprocess.run(_cmd(sweep, root, workers), env=env, capture_output=True, timeout=300, text=True)
    assert done.returncode == 0, done.stderr
    finished, skipped = map(int, re.search(r"(\d+) runs finished, (\d+) skipped", done.stdout).groups())
    # stored runs are not run again (but for one a process may have been killed in between storing its row
    # and writing its result.json: that one resumes, and its row is replaced)
    assert finished + skipped == 12 and len(before) - workers <= skipped <= len(before)
    rows = _store_rows(store)
    assert len(rows) == 12
    assert len({run_id for run_id, _ in rows}) == 12
    assert {status for _, status in rows} == {"finished"}
    run_dirs = [p for p in (root / "sweepkill").iterdir() if p.is_dir()]
    assert len(run_dirs) == 12 and all((d / "result.json").exists() for d in run_dirs)
    results = [json.loads((d / "result.json").read_text()) for d in run_dirs]
    assert sorted(r["run_id"] for r in results) == sorted(run_id for run_id, _ in rows)
    for d in run_dirs:  # a resumed run rewrites, never repeats, its evaluation lines
        (metrics,) = [p for p in d.glob("metrics-*.jsonl")]
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert len(steps) == (EPOCHS if metrics.stem.endswith("train") else FINETUNE)
        assert steps == sorted(set(steps))
    for pre in (root / "_pretrained").iterdir():  # one pretraining per seed, trained once
        assert len((pre / "metrics-pretrain.jsonl").read_text().splitlines()) == EPOCHS
    assert len(list((root / "_pretrained").iterdir())) == 3
    record("fault", f"SIGKILL a 12-run sweep with {workers} worker processes after {len(before)} rows were stored, "
           "then start it again", f"workers died with it; the restart ran {finished} and skipped {skipped}: "
           f"{len(rows)} rows, {len({r for r, _ in rows})} distinct run ids, all finished, no metric line repeated")

