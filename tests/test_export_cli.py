"""``prunekit export`` / ``prunekit measure`` end to end on a small zoo model."""
import pytest
import torch

import prunekit as pk
from prunekit.cli import main
from prunekit.export import load_pruned
from prunekit.models import create

pytest.importorskip("torch_pruning")


@pytest.fixture
def files(tmp_path):
    from safetensors.torch import save_file

    model = create("cifar_resnet20")
    pruner = pk.create("structured", model, sparsity=0.5, round_to=8, input_shape=(3, 32, 32))
    pruner.prune()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    return tmp_path / "w.safetensors", pruner.masks.save(tmp_path / "m.safetensors"), pruner.masks


def test_measure_prints_flops_ratio(files, capsys):
    weights, masks, _ = files
    assert main(["measure", "cifar_resnet20", "--weights", str(weights), "--masks", str(masks), "--compact"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs  81.63 M" in out and "compact: params 68,786  FLOPs 20.63 M  (3.96x fewer)" in out


def test_export_writes_compact_and_masks(files, tmp_path, capsys):
    weights, masks, ms = files
    out = tmp_path / "out"
    assert main(["export", "cifar_resnet20", "--weights", str(weights), "--masks", str(masks), "--compact",
                 "--torch-prune", "--out", str(out)]) == 0
    state, loaded, meta = load_pruned(out / "pruned.safetensors")
    assert set(loaded) == set(ms) and meta["model"] == "cifar_resnet20"
    compact_state, _, _ = load_pruned(out / "compact.safetensors")
    assert compact_state["conv1.weight"].shape[0] == 8
    tp_state = torch.load(out / "torch_prune.pt", weights_only=True)
    assert torch.equal(tp_state["conv1.weight_mask"].bool(), ms["conv1.weight"])


def test_export_unaligned_masks_is_a_one_line_error(files, tmp_path, capsys):
    weights, _, ms = files
    bad = ms.copy()
    m = bad["layer1.1.conv2.weight"]
    m[0, 0, 0, 0] = ~m[0, 0, 0, 0]
    path = bad.save(tmp_path / "bad.safetensors")
    rc = main(["export", "cifar_resnet20", "--masks", str(path), "--compact", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "layer1.1.conv2.weight: mask does not remove whole channels" in err
    assert not (tmp_path / "x").exists()  # nothing written


def test_export_parity_tolerance_flags(files, tmp_path, capsys):
    """The compact check is relative (--rtol, default 1e-5 of max |output|) plus --atol; float32 rounding of
    the compact ResNet-20 (~1e-7 relative) passes the default and fails an exact bound, writing nothing."""
    weights, masks, _ = files
    args = ["export", "cifar_resnet20", "--weights", str(weights), "--masks", str(masks), "--compact"]
    assert main(args + ["--rtol", "0", "--atol", "0", "--out", str(tmp_path / "exact")]) == 2
    assert "compact export changed the outputs by" in capsys.readouterr().err
    assert not (tmp_path / "exact").exists()
    assert main(args + ["--rtol", "-1", "--out", str(tmp_path / "neg")]) == 2
    assert "--rtol" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "ok")]) == 0


def test_export_and_measure_take_a_run_directory(tmp_path, capsys):
    """A finished run of the built-in harness is enough: its config gives the model and the input geometry
    (here 1×8×8 digits, 64-unit hidden layers), its weights and masks are found in the directory."""
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "st", "model": {"name": "mlp", "kwargs": {"hidden": [64, 64]}},
        "data": {"name": "sklearn_digits", "batch_size": 64, "augment": False},
        "train": {"duration": "1ep", "lr": 0.05}, "finetune": {"duration": "1ep", "lr": 0.01},
        "method": {"name": "structured", "sparsity": 0.5}, "output": {"root": str(tmp_path / "runs")}}))
    assert main(["run", str(recipe), "-q"]) == 0
    (run,) = [p for p in (tmp_path / "runs" / "st").iterdir() if p.is_dir()]
    capsys.readouterr()
    assert main(["measure", str(run), "--compact"]) == 0
    out = capsys.readouterr().out
    assert "mlp: input (1, 8, 8)" in out and "max |compact - masked|" in out
    assert main(["export", str(run), "--compact", "--out", str(tmp_path / "out")]) == 0
    compact_state, _, meta = load_pruned(tmp_path / "out" / "compact.safetensors")
    hidden = [v.shape[0] for k, v in compact_state.items() if k.endswith("weight")][:2]
    assert hidden == [32, 32] and meta["model"] == "mlp"
