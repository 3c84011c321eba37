"""Distributed data-parallel training (prunekit.distributed): batch sharding, the collectives in a real
two-process gloo group, and end to end with torchrun on real MNIST (LeNet-300-100): GraNet, SNIP and
BiP with two processes agree on their masks after every update and reach the accuracy of one process
with the same global batch; a planted mask divergence stops the run; the run resumes from rank 0's
checkpoint."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from prunekit.data.arrays import ArrayDataset
from prunekit.data.augment import Augment
from prunekit.data.loader import TensorLoader
from prunekit.distributed import init_from_env, layer_checksums
from prunekit.errors import ConfigError
from prunekit.sparsity import MaskSet

from .conftest import MNIST_DIR, REPO, require_mnist


def _dataset(n: int = 37) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    return ArrayDataset(images, torch.arange(n) % 3, num_classes=3, name="toy")


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    out = torch.empty((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r::len(parts)] = p
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_shards_interleave_to_the_global_batches(world):
    aug = Augment("pad_crop", padding=2, flip=True)
    whole = TensorLoader(_dataset(), 8, augment=aug, seed=3)
    shards = [TensorLoader(_dataset(), 8, augment=aug, seed=3) for _ in range(world)]
    for r, s in enumerate(shards):
        s.set_shard(r, world)
    for epoch in (0, 1):
        for loader in (whole, *shards):
            loader.set_epoch(epoch)
        batches = [list(s) for s in shards]
        full = list(whole)
        assert all(len(b) == len(full) == len(whole) for b in batches)  # same steps per epoch
        for i, (x, y) in enumerate(full):
            assert torch.equal(_interleave([b[i][0] for b in batches]), x)  # same samples and crops
            assert torch.equal(_interleave([b[i][1] for b in batches]), y)
    got = [list(s.random_batches(3, start_step=5)) for s in shards]
    for i, (x, _) in enumerate(whole.random_batches(3, start_step=5)):
        assert torch.equal(_interleave([g[i][0] for g in got]), x)


@pytest.mark.parametrize("dataset", ["imagenet", "tiny_imagenet"])
def test_folder_shards_interleave_to_the_global_batches(tmp_path, dataset):
    pytest.importorskip("PIL")
    import prunekit.data as D
    from prunekit.data import testing as fx
    from prunekit.distributed.shard import ShardedFolderLoader

    if dataset == "imagenet":  # per-sample random crops decoded by the workers
        fx.write_image_folder(tmp_path / "train", ["cat", "dog"], 5)
        fx.write_image_folder(tmp_path / "val", ["cat", "dog"], 1)
        opts = dict(augment=D.FolderTransform("train", size=16))
    else:  # decoded whole, then a batched pad-crop + flip on the device
        fx.write_tiny_imagenet(tmp_path, ["n01", "n02"], train_per_class=5, val_per_class=1)
        opts = dict(storage="folder")
    def build():
        return D.build_loaders(dataset, tmp_path, batch_size=4, check_counts=False, num_workers=0, **opts).train

    whole = build()
    assert whole.batch_augment is not None or dataset == "imagenet"
    shards = [ShardedFolderLoader(build(), r, 2) for r in range(2)]  # one loader per process
    for s in shards:
        s.set_epoch(1)
    parts = [list(s) for s in shards]
    whole.set_epoch(1)
    full = list(whole)
    assert len(full) == len(parts[0]) == len(parts[1]) == 3  # 10 samples: batches of 4, 4, 2
    for i, (x, y) in enumerate(full):
        assert torch.equal(_interleave([p[i][0] for p in parts]), x)
        assert torch.equal(_interleave([p[i][1] for p in parts]), y)


def test_shard_needs_a_sample_per_process_in_every_batch():
    with pytest.raises(ConfigError, match="batch_size=2 .* allowed: batch_size >= 3"):
        TensorLoader(_dataset(), 2).set_shard(0, 3)
    with pytest.raises(ConfigError, match="last batch"):  # 37 = 4 x 9 + 1: the last batch has one sample
        TensorLoader(_dataset(), 9).set_shard(1, 2)
    TensorLoader(_dataset(), 9, drop_last=True).set_shard(1, 2)
    with pytest.raises(ConfigError, match="rank=2"):
        TensorLoader(_dataset(), 8).set_shard(2, 2)


def test_without_a_launcher_nothing_is_distributed(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert init_from_env(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="environment variable RANK is not set"):
        init_from_env(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        init_from_env(torch.device("cpu"))


def test_layer_checksums_golden_and_sensitive_to_every_position():
    def weight(i: int) -> int:  # position i's weight, in Python integers
        return (i + 1) * 2654435761 % (2**31 - 1) + 1

    masks = MaskSet({"a": torch.tensor([True, False, True]), "b": torch.tensor([[False, True], [True, True]])})
    assert layer_checksums(masks).tolist() == [weight(0) + weight(2), weight(1) + weight(2) + weight(3)]
    base = layer_checksums(masks)
    for name in ("a", "b"):
        for i in range(masks[name].numel()):  # a flip anywhere, position 0 included, changes its layer only
            flipped = MaskSet({n: m.clone() for n, m in masks.items()})
            flipped[name].view(-1)[i] ^= True
            changed = layer_checksums(flipped) != base
            assert changed.tolist() == [n == name for n in ("a", "b")]
    moved = MaskSet({"a": torch.tensor([False, True, True]), "b": masks["b"]})  # same count, moved
    assert layer_checksums(moved)[0] != base[0]


# --- the collectives in a real two-process gloo group ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from prunekit.distributed import (MaskDivergenceError, average_gradients, broadcast_state, check_masks,
                               init_from_env, is_main)
    from prunekit.sparsity import MaskSet

    init_from_env(torch.device("cpu"))
    result = {}
    w = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.full((3,), float(2 * rank + 1))  # ranks: 1 and 3 -> mean 2
    average_gradients([w, b])
    result["grad"] = w.grad.tolist()
    result["no_grad_kept"] = b.grad is None
    state = {"masks": {"a": torch.tensor([True, False]) if rank == 0 else torch.tensor([False, False])},
             "step": 7 if rank == 0 else -1, "bufs": [torch.full((2,), float(rank))], "shape": (1, 2)}
    got = broadcast_state(state, torch.device("cpu"))
    result["state"] = [got["masks"]["a"].tolist(), got["masks"]["a"].dtype == torch.bool, got["step"],
                       got["bufs"][0].tolist(), list(got["shape"])]
    same = MaskSet({"fc.weight": torch.tensor([True, False, True]), "out.weight": torch.ones(2, dtype=torch.bool)})
    result["agree"] = check_masks(same, "test")
    differs = MaskSet({"fc.weight": torch.tensor([True, False, True]),
                       "out.weight": torch.tensor([True, rank == 0])})
    try:
        check_masks(differs, "train: after step 5")
        result["diverged"] = None
    except MaskDivergenceError as e:
        result["diverged"] = str(e)
    if is_main():
        Path(out).write_text(json.dumps(result))


def test_collectives_in_a_two_process_gloo_group(tmp_path):
    out = tmp_path / "result.json"
    mp.spawn(_collectives, args=(2, _free_port(), str(out)), nprocs=2)
    r = json.loads(out.read_text())
    assert r["grad"] == [2.0, 2.0, 2.0] and r["no_grad_kept"]
    assert r["state"] == [[True, False], True, 7, [0.0, 0.0], [1, 2]]  # rank 0's values, types kept
    assert len(r["agree"]) == 2 and r["agree"][0] == r["agree"][1]
    msg = r["diverged"]  # raised on rank 0 as on rank 1, naming the layer and both ranks
    assert msg.startswith("train: after step 5: masks differ across processes: 'out.weight' has checksum ")
    assert "on rank 0 and" in msg and "on rank 1;" in msg


# --- end to end on real MNIST with torchrun ---------------------------------------------------------
RECIPE = """\
name: dist
seed: 0
model: {name: lenet300_100}
data: {name: mnist, root: %s, batch_size: 128, test_batch_size: 2000, augment: false, split: bip}
train: {duration: 400it, eval_every: 200, optimizer: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0001,
        schedule: warmup_cosine}
output: {save_model: false}
method: {name: granet, sparsity: 0.9, initial_sparsity: 0.5, update_frequency: 50, final_prune_epoch: 0.5}
grid:
  method:
    - {name: granet, sparsity: 0.9, initial_sparsity: 0.5, update_frequency: 50, final_prune_epoch: 0.5}
    - {name: snip, sparsity: 0.9}
    - {name: bip, sparsity: 0.9}
"""

# a method whose masks change on one rank only: the worker registers it, then runs the CLI
PLANTED = """\
import os, sys
import torch
from prunekit.cli import main
from prunekit.distributed import rank
from prunekit.methods import gmp

update = gmp.GraNet._update
def planted(self, step):
    update(self, step)
    if step == int(os.environ["PLANT_AT_STEP"]) and rank() == 1:
        m = next(iter(self.masks.values())).view(-1)
        m[0] = ~m[0]
gmp.GraNet._update = planted
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(args: list[str], cwd: Path, env: dict | None = None, script: list[str] | None = None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *(script or ["-m", "prunekit"]), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _runs(root: Path) -> dict[str, dict]:
    con = sqlite3.connect(root / "results.sqlite")
    rows = con.execute("select method, final_acc, status, run_dir from runs").fetchall()
    assert len(rows) == len({r[0] for r in rows}), rows  # one row per run: only rank 0 writes
    return {m: {"acc": acc, "status": st, "dir": Path(d)} for m, acc, st, d in rows}


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory):
    require_mnist()
    tmp = tmp_path_factory.mktemp("dist")
    recipe = tmp / "dist.yaml"
    recipe.write_text(RECIPE % MNIST_DIR)
    two = _torchrun(["run", str(recipe), f"output.root={tmp / 'two'}", "-q"], cwd=tmp)
    assert two.returncode == 0, two.stderr[-3000:]
    from prunekit.cli import main

    torch.set_num_threads(1)
    assert main(["run", str(recipe), f"output.root={tmp / 'one'}", "-q"]) == 0
    return tmp, recipe, _runs(tmp / "two"), _runs(tmp / "one")


def _checksum_log(run_dir: Path, phase: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / f"mask-checksums-{phase}.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method, phase, updates", [
    ("granet", "train", list(range(50, 401, 50))),  # every mask update (update_frequency 50)
    ("snip", "train", []),  # masks fixed after pruning at init: checked at the start and every segment
    ("bip", "finetune", list(range(1, 401))),  # BiP selects a new mask every step
])
def test_two_processes_keep_identical_masks_and_match_one(mnist_runs, method, phase, updates):
    _, _, two, one = mnist_runs
    assert two[method]["status"] == one[method]["status"] == "finished"
    log = _checksum_log(two[method]["dir"], phase)
    assert all(len(r["checksums"]) == 2 and r["checksums"][0] == r["checksums"][1] for r in log)
    assert [r["step"] for r in log if r["event"] == "update"] == updates
    assert [r["step"] for r in log if r["event"] in ("start", "segment")] == [0, 200, 400]
    saved = MaskSet(load_file(two[method]["dir"] / "masks.safetensors"))  # the masks last compared
    assert int(layer_checksums(saved).sum()) == log[-1]["checksums"][0]
    assert abs(two[method]["acc"] - one[method]["acc"]) <= 0.5, (method, two[method]["acc"], one[method]["acc"])
    assert not (one[method]["dir"] / f"mask-checksums-{phase}.jsonl").exists()  # single process: no log


@pytest.mark.slow
def test_planted_divergence_stops_the_run_and_the_run_resumes(mnist_runs):
    tmp, recipe, two, _ = mnist_runs
    root = tmp / "planted"
    script = tmp / "planted.py"
    script.write_text(PLANTED)
    args = ["run", str(recipe), "grid.method=[{name: granet, sparsity: 0.9, initial_sparsity: 0.5, "
            "update_frequency: 50, final_prune_epoch: 0.5}]", f"output.root={root}", "-q"]
    bad = _torchrun(args, cwd=tmp, env={"PLANT_AT_STEP": "250"}, script=[str(script)])
    assert bad.returncode != 0
    assert ("prunekit: error: train: after step 250: masks differ across processes: 'layers.0.weight' has checksum"
            in bad.stderr), bad.stderr[-3000:]
    run_dir = next((root / "dist").iterdir())
    assert run_dir.name == two["granet"]["dir"].name  # the same run as the uninterrupted one
    assert not (run_dir / "result.json").exists()
    state = torch.load(run_dir / "checkpoint-train.pt", weights_only=True)
    assert state["step"] == 200  # the last segment before the divergence; nothing after it written
    assert [r["step"] for r in _checksum_log(run_dir, "train")][-1] == 200

    good = _torchrun(args, cwd=tmp, env={"PLANT_AT_STEP": "-1"}, script=[str(script)])
    assert good.returncode == 0, good.stderr[-3000:]
    log = _checksum_log(run_dir, "train")
    assert [(r["step"], r["event"]) for r in log if r["event"] != "update"] == [
        (0, "start"), (200, "segment"), (200, "start"), (400, "segment")]  # resumed at step 200
    # resumed from rank 0's checkpoint: bit-identical to the uninterrupted two-process run
    a, b = load_file(run_dir / "masks.safetensors"), load_file(two["granet"]["dir"] / "masks.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run_dir / "result.json").read_text())["final_acc"] == two["granet"]["acc"]
