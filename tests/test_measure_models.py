"""FLOPs on models beyond the zoo: per-weight counts equal the counter's per-layer counts on a CNN, packed
attention projections and functional out-projections count, tied weights count under one name, token
inputs work, and a DST run's training-FLOPs ratio is computed on a Hugging Face model."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.modelio import ModelIO
from prunekit.sparsity.measure import count_flops, module_flops, weight_flops


def test_weight_flops_equal_the_counters_layer_flops_on_a_cnn():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=4),
                          nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    per_module = module_flops(model, (3, 16, 16))
    per_weight = weight_flops(model, (3, 16, 16))
    assert per_weight == {f"{i}.weight": per_module[str(i)] for i in (0, 2, 4)}


def test_multihead_attention_projections_and_attention_products():
    e, t = 16, 5
    mha = nn.MultiheadAttention(e, 4, batch_first=True)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    model = SelfAttention()
    per_weight = weight_flops(model, (t, e))
    assert per_weight["mha.in_proj_weight"] == 2 * 3 * e * e * t
    assert per_weight["mha.out_proj.weight"] == 2 * e * e * t
    dense = count_flops(model, (t, e))["flops"]
    assert dense == 2 * 4 * e * e * t + 2 * 2 * t * t * e  # projections + QK^T and AV over all heads
    half = {n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters() if n.endswith("weight")}
    sparse = count_flops(model, (t, e), half)["sparse_flops"]
    expected = dense - sum(per_weight[n] * (1 - float(m.float().mean())) for n, m in half.items())
    assert sparse == pytest.approx(expected)


def test_tied_head_counts_under_the_embedding_name_and_token_inputs():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    per_weight = weight_flops(model, (8,), dtype=torch.long)
    assert per_weight["transformer.wte.weight"] == 2 * 64 * 16 * 8  # the lm_head product
    assert "lm_head.weight" not in per_weight
    pruner = pk.create("granet", model, sparsity=0.8, initial_sparsity=0.0, update_frequency=5, total_steps=10)
    pruner.setup(pk.PruneContext(total_steps=10))
    pruner.on_init(pk.PruneContext())
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    for _ in range(10):
        x = torch.randint(0, 64, (4, 8))
        opt.zero_grad()
        ModelIO().loss(model, x[:, :-1], x[:, 1:]).backward()
        opt.step()
    ratio = pruner.training_flops_ratio()
    assert 0.2 < ratio < 1.0
