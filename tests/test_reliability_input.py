"""Bad data files, checkpoints and masks through the command line: one line, exit 2, nothing written.

(The readers' own unit tests are in test_data.py, test_train.py and test_sparsity_masks.py; here each
failure is checked end to end: ``prunekit run`` with the damaged file.)
"""
from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml

import prunekit as pk
from prunekit.data import testing as fx
from prunekit.errors import CheckpointError, MaskError
from tests.reliability import cli_error, record


def _mnist(root, n_train=100, n_test=50):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", n_train), ("test", n_test))}
    labels = {s: rng.integers(0, 10, n, dtype=np.uint8) for s, n in (("train", n_train), ("test", n_test))}
    return fx.write_mnist(root, images, labels)


def _damage_magic(root):
    path = root / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[3] = 1  # 0x00000803 -> 0x00000801 (a labels file)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Marker:
    """Unpickling this creates ``path``: proof that a payload ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


MNIST_CASES = {
    "missing": ("an empty data folder", lambda root: [p.unlink() for p in root.iterdir()],
                "train-images-idx3-ubyte.gz: file not found; expected train-images-idx3-ubyte[.gz] in"),
    "magic": ("train images with the magic number of a labels file", _damage_magic,
              "train-images-idx3-ubyte.gz: wrong magic number 0x00000801; expected 0x00000803"),
    "truncated": ("train images gzip cut in half", lambda root: _truncate(root / "train-images-idx3-ubyte.gz"),
                  "train-images-idx3-ubyte.gz: corrupt or truncated gzip data"),
    "count": ("a well-formed MNIST with 100 training images", lambda root: None,
              "train-images-idx3-ubyte.gz: 100 samples; expected 60000 (official mnist train split)"),
    "checksum": ("the same files with `data.verify_checksums=true`", lambda root: None,
                 "checksum mismatch: expected"),
}


@pytest.mark.parametrize("case", list(MNIST_CASES))
def test_bad_mnist_files(capsys, tmp_path, case):
    tried, damage, expected = MNIST_CASES[case]
    root, out = _mnist(tmp_path / "mnist"), tmp_path / "runs"
    damage(root)
    extra = ["data.verify_checksums=true"] if case == "checksum" else []
    line = cli_error(capsys, ["run", "lenet300_mnist", f"data.root={root}", f"output.root={out}", *extra], written=out)
    assert expected in line
    record("data", f"MNIST: {tried}", f"exit 2, nothing written: `{line}`", tmp_path=tmp_path)


def _cifar(root, archive=True):
    """A CIFAR-10 distribution with 10 training and 4 test images."""
    rng = np.random.default_rng(1)
    train = (rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 10))
    test = (rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 4))
    return fx.write_cifar(root, "cifar10", train, test, archive=archive)


def _cifar_cli(tmp_path, root):
    return ["run", "quickstart", "grid={}", "model.name=lenet5", "data.name=cifar10", f"data.root={root}",
            f"output.root={tmp_path / 'runs'}"]


def test_truncated_cifar_archive(capsys, tmp_path):
    _truncate(_cifar(tmp_path / "cifar"))
    line = cli_error(capsys, _cifar_cli(tmp_path, tmp_path / "cifar"), written=tmp_path / "runs")
    assert "cifar-10-python.tar.gz: corrupt or truncated archive" in line
    record("data", "CIFAR-10: the .tar.gz cut in half", f"exit 2, nothing written: `{line}`", tmp_path=tmp_path)


def test_cifar_batch_with_a_pickled_payload_is_refused_and_not_run(capsys, tmp_path):
    folder = _cifar(tmp_path / "cifar", archive=False)
    marker = tmp_path / "payload-ran"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Marker(marker)}, protocol=2))
    line = cli_error(capsys, _cifar_cli(tmp_path, tmp_path / "cifar"), written=tmp_path / "runs")
    assert "data_batch_1" in line and not marker.exists()
    record("data", "CIFAR-10: a batch file whose pickle calls `open(...)` when loaded",
           f"the payload did not run; exit 2: `{line}`", tmp_path=tmp_path)


# --- checkpoints and masks ------------------------------------------------------------------------

RUN = {
    "name": "ckpt",
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "sklearn_digits", "batch_size": 64, "augment": False},
    "method": {"name": "magnitude", "sparsity": 0.5, "when": "after"},
    "train": {"duration": "1ep"},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished after-training run (pretraining cached) and the recipe file that made it."""
    tmp = tmp_path_factory.mktemp("finished")
    recipe = tmp / "ckpt.yaml"
    recipe.write_text(yaml.safe_dump(RUN))
    pk.run({**RUN, "output": {"root": str(tmp / "runs")}})
    return recipe, tmp / "runs"


@pytest.fixture
def interrupted(finished, tmp_path):
    """A copy of the finished run that looks killed during fine-tuning (no result.json)."""
    recipe, root = finished
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    (run_dir,) = (copy / "ckpt").iterdir()
    (run_dir / "result.json").unlink()
    return recipe, copy, run_dir


def _other_model_state(hidden):
    return {"model": pk.models.create("mlp", hidden=hidden).state_dict()}


CHECKPOINT_CASES = {
    "corrupt": ("4 KiB of random bytes", lambda ck, tmp: ck.write_bytes(np.random.default_rng(0).bytes(4096)),
                "checkpoint-finetune.pt: refused to load (Unsupported operand"),
    "truncated": ("cut in half", lambda ck, tmp: _truncate(ck), "checkpoint-finetune.pt: not a readable checkpoint ("),
    "payload": ("a pickle whose payload calls `open(...)` (saved with `torch.save`)",
                lambda ck, tmp: torch.save({"model": Marker(tmp / "payload-ran")}, ck),
                "checkpoint-finetune.pt: refused to load (Unsupported global: GLOBAL io.open was not an allowed global by "
                "default); a checkpoint may hold only tensors and plain containers"),
    "shapes": ("the checkpoint of an MLP with 24 hidden units (the run's has 16)",
               lambda ck, tmp: torch.save(_other_model_state([24]), ck),
               "checkpoint-finetune.pt: 'layers.0.weight' has shape (24, 64), the model has (16, 64)"),
    "names": ("the run's own checkpoint with its parameters renamed (`layers.*` -> `fc.*`)",
              lambda ck, tmp: torch.save({"model": {k.replace("layers", "fc"): v for k, v in
                                                    torch.load(ck, weights_only=True)["model"].items()}}, ck),
              "checkpoint-finetune.pt: no entry for 'layers.0.weight'; expected the parameters of this run's MLP"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint_on_resume(capsys, interrupted, tmp_path, case):
    tried, damage, expected = CHECKPOINT_CASES[case]
    recipe, root, run_dir = interrupted
    ckpt = run_dir / "checkpoint-finetune.pt"
    damage(ckpt, tmp_path)
    line = cli_error(capsys, ["run", str(recipe), f"output.root={root}"])
    assert expected in line
    assert not (run_dir / "result.json").exists() and not (tmp_path / "payload-ran").exists()
    record("checkpoint", f"resume a killed run whose `checkpoint-finetune.pt` is {tried}", f"exit 2, nothing run: `{line}`",
           tmp_path=tmp_path)


def test_corrupt_cached_pretrained_weights(capsys, interrupted, tmp_path):
    recipe, root, run_dir = interrupted
    (weights,) = (root / "_pretrained").glob("*/model.safetensors")
    _truncate(weights)
    line = cli_error(capsys, ["run", str(recipe), f"output.root={root}"])
    assert f"{weights}: not a readable safetensors file (" in line and line.endswith("delete it to recompute it")
    record("checkpoint", "cached dense pretraining weights (`_pretrained/*/model.safetensors`) cut in half",
           f"exit 2: `{line}`", tmp_path=tmp_path)


MASK_CASES = {
    "shapes": ("the masks of an MLP with 16 hidden units loaded into one with 24", MaskError,
               "mask 'layers.0.weight' has shape (16, 64), the parameter has (24, 64)"),
    "truncated": ("a mask file cut in half", CheckpointError, "not a readable safetensors mask file"),
    "payload": ("a pickle (with a payload) named masks.safetensors", CheckpointError,
                "not a readable safetensors mask file"),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_bad_mask_file(finished, tmp_path, case):
    tried, error, expected = MASK_CASES[case]
    (masks,) = finished[1].glob("ckpt/*/masks.safetensors")
    path = tmp_path / "masks.safetensors"
    shutil.copy(masks, path)
    hidden = [16]
    if case == "shapes":
        hidden = [24]
    elif case == "truncated":
        _truncate(path)
    else:
        path.write_bytes(pickle.dumps(Marker(tmp_path / "payload-ran")))
    with pytest.raises(error) as e:
        pk.MaskSet.load(path, pk.models.create("mlp", hidden=hidden))
    assert expected in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not (tmp_path / "payload-ran").exists()
    record("checkpoint", f"`MaskSet.load(path, model)`: {tried}", f"`{type(e.value).__name__}: {e.value}`",
           tmp_path=tmp_path)
