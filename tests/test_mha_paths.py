"""Path counting through ``nn.MultiheadAttention`` equals the same attention written with q/k/v/out
Linear layers and ``scaled_dot_product_attention``: DPaI, NPB and PHEW give the same masks on both forms
(the packed projections kept dense, the out-projection searched), and the dense path counts agree."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.diagnostics.connectivity import log_paths


class LinearAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    """Pre-norm encoder layer: ``nn.MultiheadAttention`` or the Linear form, the same MLP."""

    def __init__(self, dim, mha: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True) if mha else LinearAttention(dim, 4)
        self.linear1, self.linear2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        a = self.attn(h, h, h, need_weights=False)[0] if isinstance(self.attn, nn.MultiheadAttention) else self.attn(h)
        x = x + a
        return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, mha: bool, dim=16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.layers = nn.Sequential(Layer(dim, mha), Layer(dim, mha))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.layers(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def twins():
    torch.manual_seed(0)
    return ViT(True), ViT(False)


def pruned_names(masks):
    return [n.replace("attn.out_proj", "attn.out") for n in masks.names()]


@pytest.mark.parametrize("method,settings", [("dpai", {"steps": 30}), ("npb", {}), ("phew", {})])
def test_multihead_attention_masks_equal_the_linear_form(method, settings):
    mha, linear = twins()
    masks = {}
    for key, model in (("mha", mha), ("linear", linear)):
        pruner = pk.create(method, model, sparsity=0.8, seed=2, input_shape=(3, 16, 16), **settings)
        pruner.prune()
        masks[key] = pruner.masks
    if method == "dpai":  # reference setting: q/k/v (the packed in_proj_weight) dense, the out-projection searched
        assert pruned_names(masks["mha"]) == pruned_names(masks["linear"])
        for a, b in zip(masks["mha"].values(), masks["linear"].values()):
            assert torch.equal(a, b)
    else:  # NPB and PHEW keep every nn.MultiheadAttention weight dense (its out_proj is applied functionally)
        assert not any("attn" in n for n in masks["mha"].names())
        assert masks["mha"].sparsity() == pytest.approx(0.8, abs=1e-3)


def test_dense_path_counts_agree():
    mha, linear = twins()
    a = pk.MaskSet.from_model(mha)
    b = pk.MaskSet.from_model(linear)
    a = pk.MaskSet({n: m for n, m in a.items() if "in_proj" not in n}).bind(mha)
    b = pk.MaskSet({n: m for n, m in b.items() if not any(f"attn.{p}." in n for p in "qkv")}).bind(linear)
    assert log_paths(mha, a, (3, 16, 16)) == pytest.approx(log_paths(linear, b, (3, 16, 16)), rel=1e-9)


def test_kept_query_key_weights_are_effective_and_not_a_collapse():
    import warnings

    from prunekit.diagnostics.connectivity import check_layer_collapse, effective_masks

    _, linear = twins()
    masks = pk.create("random", linear, sparsity=0.5, seed=0).prune()
    eff = effective_masks(linear, masks, (3, 16, 16))
    for name in ("layers.0.attn.q.weight", "layers.0.attn.k.weight"):
        assert torch.equal(eff[name], masks[name])  # they gate the softmax: no path, but they act
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_layer_collapse(linear, masks, (3, 16, 16)) == []
