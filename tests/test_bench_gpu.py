"""``make bench-gpu`` and the GPU fast path on a machine without CUDA: the one-line exit, the script's
plumbing on the CPU with tiny sizes, ``train.cuda_graph`` refusing in one line, ``device: auto``."""
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bench_gpu
from prunekit.cli import main as cli_main
from prunekit.errors import ConfigError
from prunekit.experiments import build_config
from prunekit.train import TrainConfig, Trainer
from prunekit.train.cuda_graph import cuda_graph_refusal

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "sklearn_digits", "batch_size": 64, "test_batch_size": 512, "augment": False},
    "train": {"duration": "20it", "lr": 0.05},
}


def test_without_cuda_one_line_and_exit_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.md"
    assert bench_gpu.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [bench_gpu.NO_CUDA] and not out.exists()


def test_make_target_runs_the_script():
    dry = subprocess.run(["make", "-n", "bench-gpu"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "-m benchmarks.bench_gpu" in dry.stdout


def test_plumbing_on_cpu_with_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert bench_gpu.main(["--plumbing", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Plumbing run on the CPU" in text and "Device: CPU (plumbing)" in text
    checks = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in text.splitlines()
              if line.startswith("| pruned") or line.startswith("| resume") or line.startswith("| 2:4")
              or line.startswith("| NCCL")}
    assert checks["pruned weights stay zero: bf16 autocast"] == "PASS"
    assert checks["pruned weights stay zero: channels_last"] == "PASS"
    assert checks["resume bit-identical"] == "PASS"
    assert checks["2:4 semi-structured: parity and speed"] == "skipped"
    assert checks["NCCL DDP (2 processes)"] == "skipped"
    timings = [line.split(" | ") for line in text.splitlines() if line.startswith("| eager")
               or line.startswith("| channels_last") or line.startswith("| packed")]
    assert [t[0][2:] for t in timings] == ["eager, NCHW", "channels_last + bf16", "packed K=2 (eager)"]
    for row in timings:  # status ok, and epoch = 391 steps x step + evaluation: a projection, not a copy
        assert row[1] == "ok" and float(row[2]) > 0 and float(row[3]) >= 391 * float(row[2]) / 1e3
        assert float(row[4]) == pytest.approx(float(row[3]) * 160 / 60, rel=0.01, abs=0.06)


def _trainer(cfg_extra: dict):
    from prunekit.experiments.runner import Built

    built = Built(build_config({**TINY, "device": "cpu"}))
    return Trainer(built.model, built.train_loader, built.test_loader, TrainConfig(**{**TINY["train"], **cfg_extra}))


def test_cuda_graph_refuses_on_cpu_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs a CUDA device") as e:
        _trainer({"cuda_graph": True})
    assert "\n" not in str(e.value)
    root = tmp_path / "runs"
    assert cli_main(["run", "quickstart", f"output.root={root}", "train.cuda_graph=true", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda_graph" in err[0] and not root.exists()


def test_cuda_graph_refusals_on_a_cuda_trainer():
    """The checks after the device one, on a stand-in trainer whose device says cuda."""
    from prunekit.methods import METHODS, method_config

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    loader = SimpleNamespace(num_samples=100, batch_size=10, drop_last=False)

    def fake(pruner=None, n=100, **cfg):
        return SimpleNamespace(device=torch.device("cuda"), pruner=pruner, cfg=TrainConfig(**cfg), sync=None,
                               train_loader=SimpleNamespace(**{**loader.__dict__, "num_samples": n}))

    assert cuda_graph_refusal(fake()) is None
    assert cuda_graph_refusal(fake(METHODS.get("snip")(model, method_config({"name": "snip", "sparsity": 0.5})))) is None
    rigl = METHODS.get("rigl")(model, method_config({"name": "rigl", "sparsity": 0.5}))
    assert "per-step hooks" in cuda_graph_refusal(fake(rigl))
    assert "fp16" in cuda_graph_refusal(fake(amp="fp16"))
    assert "compile" in cuda_graph_refusal(fake(compile=True))
    assert "partial last batch" in cuda_graph_refusal(fake(n=105))


def test_device_auto_is_the_default_and_is_printed(tmp_path, capsys):
    assert build_config(TINY).device == "auto"
    assert cli_main(["run", "quickstart", f"output.root={tmp_path}", "train.duration=2it"]) == 0
    out = capsys.readouterr().out
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device: {expected} (device: auto)" in out
