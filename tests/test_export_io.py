"""Export formats: safetensors (weights + masks + report), torch.nn.utils.prune interop, ONNX parity,
compact rebuild, CSR linear layers, N:M + semi-structured (CUDA only)."""
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError, MaskError
from prunekit.export import (compact_model, from_torch_prune, load_pruned, rebuild_compact, save_pruned,
                             state_from_torch_prune, state_to_torch_prune, to_torch_prune)
from prunekit.export.csr import to_csr
from prunekit.export.semi_structured import nm_masks, semi_structured_supported, to_semi_structured
from prunekit.models import create


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def magnitude_masks(model, sparsity=0.75):
    pruner = pk.create("magnitude", model, sparsity=sparsity, allocation="uniform")
    pruner.prune()
    return pruner.masks


def test_safetensors_round_trip_with_report(tmp_path):
    model = mlp()
    masks = magnitude_masks(model)
    path = save_pruned(tmp_path / "m.safetensors", model, masks, metadata={"model": "mlp", "extra": [1, 2]})
    state, loaded, meta = load_pruned(path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert list(loaded) == ["0.weight", "2.weight"] and all(torch.equal(loaded[n], masks[n]) for n in masks)
    import json
    report = json.loads(meta["report"])
    assert report["nnz"] == masks.nnz() == 128 // 4 + 64 // 4
    assert report["params"]["nonzero"] == 212 - 144  # 8*16+16 + 16*4+4 params, 75% of 192 weights masked
    assert meta["model"] == "mlp" and json.loads(meta["extra"]) == [1, 2]


def test_load_pruned_rejects_other_files(tmp_path):
    masks_file = magnitude_masks(mlp()).save(tmp_path / "masks.safetensors")
    with pytest.raises(CheckpointError, match="not a readable prunekit pruned-weights file"):
        load_pruned(masks_file)
    with pytest.raises(CheckpointError, match="file not found"):
        load_pruned(tmp_path / "none.safetensors")


def test_torch_prune_round_trip_live_modules():
    model = mlp()
    masks = magnitude_masks(model)
    x = torch.randn(3, 8)
    expected = model(x)
    to_torch_prune(model, masks)
    assert hasattr(model[0], "weight_orig") and torch.equal(model[0].weight_mask.bool(), masks["0.weight"])
    assert torch.allclose(model(x), expected)
    back = from_torch_prune(model)
    assert not hasattr(model[0], "weight_orig")  # made permanent
    assert all(torch.equal(back[n], masks[n]) for n in masks) and back.params[0] is model[0].weight
    assert torch.allclose(model(x), expected)


def test_masks_from_code_using_torch_prune():
    model = mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.random_unstructured(model[0], "weight", amount=0.25)  # a PruningContainer
    expected = model[0].weight_mask.bool().clone()
    masks = from_torch_prune(model, remove=False)
    assert list(masks) == ["0.weight"] and torch.equal(masks["0.weight"], expected)
    with pytest.raises(MaskError, match="no torch.nn.utils.prune"):
        from_torch_prune(mlp())


def test_torch_prune_state_dicts():
    model = mlp()
    masks = magnitude_masks(model)
    pruned_state = state_to_torch_prune(model.state_dict(), masks)
    assert set(pruned_state) == {"0.weight_orig", "0.weight_mask", "0.bias", "2.weight_orig", "2.weight_mask", "2.bias"}
    other = to_torch_prune(mlp(), {n: torch.ones_like(m) for n, m in masks.items()})
    other.load_state_dict(pruned_state)  # loads into code that uses torch.nn.utils.prune
    plain, back = state_from_torch_prune(other.state_dict())
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    assert torch.equal(plain["0.weight"], model[0].weight)
    with pytest.raises(MaskError, match="names no entry"):
        state_to_torch_prune({}, masks)


def test_onnx_parity_of_compact_option_a_resnet(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch_pruning")
    from prunekit.export.onnx import export_onnx, onnx_parity

    model = create("resnet20s").eval()
    pruner = pk.create("structured", model, sparsity=0.5, round_to=8, input_shape=(3, 32, 32))
    pruner.prune()
    x = torch.randn(2, 3, 32, 32)
    result = compact_model(model, pruner.masks, x)
    path = export_onnx(result.model, tmp_path / "compact.onnx", x)
    assert onnx_parity(result.model, path, torch.randn(5, 3, 32, 32)) <= 1e-5  # other batch size: dynamic axis


def test_compact_rebuild_from_saved_file(tmp_path):
    pytest.importorskip("torch_pruning")
    model = create("cifar_resnet20").eval()
    pruner = pk.create("structured", model, sparsity=0.5, input_shape=(3, 32, 32))
    pruner.prune()
    x = torch.randn(2, 3, 32, 32)
    result = compact_model(model, pruner.masks, x)
    path = save_pruned(tmp_path / "c.safetensors", result.model, metadata={"compact_history": result.history})
    state, masks, meta = load_pruned(path)
    import json
    fresh = rebuild_compact(create("cifar_resnet20").eval(), json.loads(meta["compact_history"]), x)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))
    assert masks == {}


def test_csr_linear_matches_masked_dense():
    model = create("lenet300_100").eval()
    masks = magnitude_masks(model, 0.95)
    csr = to_csr(model, masks, max_density=0.1)
    assert sum(isinstance(m, nn.Linear) for m in csr.modules()) == 0
    x = torch.randn(4, 784)
    with torch.no_grad():
        assert torch.allclose(csr(x), model(x), atol=1e-5)  # model itself was masked by the pruner


def test_nm_masks_are_2_of_4():
    model = mlp()
    masks = nm_masks(model)
    assert list(masks) == ["0.weight", "2.weight"]
    for m in masks.values():
        assert torch.all(m.reshape(m.shape[0], -1, 4).sum(-1) == 2)


@pytest.mark.skipif(semi_structured_supported("cuda"), reason="CPU refusal path")
def test_semi_structured_refuses_without_cuda():
    model = mlp()
    with pytest.raises(ConfigError, match="CUDA device with compute capability"):
        to_semi_structured(model, nm_masks(model))


@pytest.mark.skipif(not semi_structured_supported("cuda"), reason="needs a CUDA GPU with compute capability >= 8")
def test_semi_structured_matches_masked_dense_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().half().eval()
    masks = nm_masks(model)
    sparse = to_semi_structured(model, masks)
    with torch.no_grad():
        for name, m in masks.items():
            model.get_submodule(name.rpartition(".")[0]).weight.mul_(m.half())
        x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
        assert torch.allclose(sparse(x), model(x), atol=1e-2, rtol=1e-2)
