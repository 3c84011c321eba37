"""Path counting through Hugging Face ``Conv1D`` (weight stored ``[in, out]``): DPaI and the connectivity
diagnostics on a Conv1D network equal the same network written with ``nn.Linear``, transposed."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.diagnostics.connectivity import connectivity

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


class Block(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.fc1, self.act, self.fc2, self.head = layer(12, 24), nn.ReLU(), layer(24, 16), layer(16, 5)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def pair():
    torch.manual_seed(0)
    lin = Block(lambda i, o: nn.Linear(i, o))
    conv = Block(lambda i, o: Conv1D(o, i))
    with torch.no_grad():
        for name in ("fc1", "fc2", "head"):
            getattr(conv, name).weight.copy_(getattr(lin, name).weight.t())
            getattr(conv, name).bias.copy_(getattr(lin, name).bias)
    x = torch.randn(3, 12)
    torch.testing.assert_close(conv(x), lin(x))
    return lin, conv


@pytest.mark.parametrize("allocation", ["erk", "uniform", "global"])
def test_dpai_on_conv1d_equals_linear_transposed(allocation):
    lin, conv = pair()
    masks = {}
    for key, model in (("lin", lin), ("conv", conv)):
        pruner = pk.create("dpai", model, sparsity=0.8, steps=40, seed=3, allocation=allocation, input_shape=(12,))
        pruner.prune()
        masks[key] = pruner.masks
    for name in ("fc1.weight", "fc2.weight", "head.weight"):
        assert torch.equal(masks["conv"][name].t(), masks["lin"][name]), name


def test_connectivity_counts_conv1d_nodes_on_its_output_axis():
    lin, conv = pair()
    ml = pk.create("random", lin, sparsity=0.7, seed=1).prune()
    mc = pk.MaskSet({n: m.t().clone() for n, m in ml.items()}).bind(conv)
    a, b = connectivity(lin, ml, (12,)), connectivity(conv, mc, (12,))
    assert a.log_paths == pytest.approx(b.log_paths)
    assert a.effective_nodes == b.effective_nodes and a.effective == b.effective
    for name in ml:
        assert a.layers[name]["nodes"] == b.layers[name]["nodes"]
        assert a.layers[name]["nodes_total"] == b.layers[name]["nodes_total"]


def test_dpai_on_gpt2_keeps_the_packed_qkv_projection_dense():
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    pruner = pk.create("dpai", model, sparsity=0.8, steps=20, seed=0, input_shape=(8,))
    pruner.prune()
    assert "transformer.h.0.attn.c_attn.weight" not in pruner.masks
    assert "transformer.h.0.attn.c_attn.weight" in pruner.kept_dense
    assert pruner.masks.sparsity() == pytest.approx(0.8, abs=1e-3)
    eff = connectivity(model, pruner.masks, (8,))
    assert all(r["effective"] > 0 for r in eff.layers.values())


@pytest.mark.parametrize("method", ["phew", "npb", "synflow"])
def test_path_methods_on_conv1d_equal_linear_transposed(method):
    lin, conv = pair()
    masks = {}
    for key, model in (("lin", lin), ("conv", conv)):
        pruner = pk.create(method, model, sparsity=0.8, seed=3, input_shape=(12,),
                           **({"rounds": 5} if method == "synflow" else {}))
        pruner.prune()
        masks[key] = pruner.masks
    for name in ("fc1.weight", "fc2.weight", "head.weight"):
        assert torch.equal(masks["conv"][name].t(), masks["lin"][name]), name


@pytest.mark.parametrize("method", ["lap", "lap_forward", "lap_backward", "lap_global", "mp", "obd"])
def test_lap_family_on_conv1d_equals_linear_transposed(method):
    lin, conv = pair()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g))]
    masks = {}
    for key, model in (("lin", lin), ("conv", conv)):
        pruner = pk.create(method, model, sparsity=0.7)
        pruner.prune(pk.PruneContext(batches=data))
        masks[key] = pruner.masks
    for name in ("fc1.weight", "fc2.weight", "head.weight"):
        assert torch.equal(masks["conv"][name].t(), masks["lin"][name]), name
