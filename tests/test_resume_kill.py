"""A run killed with SIGKILL mid-training and started again ends bit-identical to an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import torch
import yaml
from safetensors.torch import load_file

RECIPE = {
    "name": "killtest",
    "seed": 1,
    "model": {"name": "mlp", "kwargs": {"hidden": [256, 256]}},
    "data": {"name": "sklearn_digits", "batch_size": 8, "test_batch_size": 512, "augment": False},
    "method": {"name": "random", "sparsity": 0.8, "allocation": "erk"},
    "train": {"duration": "24ep", "lr": 0.02, "momentum": 0.9, "schedule": "cosine"},
}


def _cmd(recipe, root):
    return [sys.executable, "-m", "prunekit", "run", str(recipe), f"output.root={root}", "-q"]


def _run_dir(root):
    (d,) = [p for p in (root / "killtest").iterdir() if p.is_dir()]
    return d


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    recipe = tmp_path / "kill.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    ref_root = tmp_path / "ref"
    subprocess.run(_cmd(recipe, ref_root), check=True, env=env, capture_output=True, timeout=600)

    root = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(recipe, root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline:
        runs = root / "killtest"
        if runs.is_dir() and any(runs.iterdir()):
            metrics = _run_dir(root) / "metrics-train.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run_dir = _run_dir(root)
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"
    done = len(metrics.read_text().splitlines())
    assert 3 <= done < 24

    subprocess.run(_cmd(recipe, root), check=True, env=env, capture_output=True, timeout=600)
    ref_dir = _run_dir(ref_root)
    ref_masks = load_file(str(ref_dir / "masks.safetensors"))
    masks = load_file(str(run_dir / "masks.safetensors"))
    assert ref_masks.keys() == masks.keys()
    assert all(torch.equal(ref_masks[k], masks[k]) for k in masks)
    ref_model = load_file(str(ref_dir / "model.safetensors"))
    model = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(ref_model[k], model[k]) for k in model)
    ref_lines = (ref_dir / "metrics-train.jsonl").read_text().splitlines()
    lines = (run_dir / "metrics-train.jsonl").read_text().splitlines()
    assert len(lines) == 24 and lines == ref_lines
    ref_result = json.loads((ref_dir / "result.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    for key in ("final_acc", "best_acc", "achieved_sparsity", "nonzero_params"):
        assert result[key] == ref_result[key]
