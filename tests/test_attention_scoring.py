"""Second-order scorers (GraSP, ProsPr) through ``scaled_dot_product_attention``: each result equals the
same score computed with an explicit softmax attention (two paths, float64)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.methods import PruneContext
from prunekit.models.vit import SelfAttention, VisionTransformer
from prunekit.scoring import grasp_scores
from prunekit.scoring.prospr import prospr_scores


def explicit_attention(self, x):
    """``SelfAttention.forward`` with the attention written out (softmax of scaled dot products)."""
    b, n, d = x.shape
    q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
    att = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return self.out((att @ v).transpose(1, 2).reshape(b, n, d))


def tiny_vit():
    torch.manual_seed(0)
    model = VisionTransformer(8, 4, dim=16, depth=2, heads=2, mlp_dim=32, num_classes=5, zero_head=False)
    return model.double().eval()


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (4,), generator=g))
            for _ in range(n)]


def assert_same_scores(a, b, rtol=1e-9):
    assert a.keys() == b.keys()
    for n in a:
        scale = max(float(a[n].abs().max()), 1e-300)
        assert float((a[n] - b[n]).abs().max()) <= rtol * scale, n


@pytest.mark.parametrize("second_order", ["fused", "autograd"])
def test_grasp_on_vit_equals_explicit_softmax_attention(monkeypatch, second_order):
    model, data = tiny_vit(), batches()
    masks = pk.MaskSet.from_model(model)
    fused_kernel = grasp_scores(model, masks, data, second_order=second_order)
    monkeypatch.setattr(SelfAttention, "forward", explicit_attention)
    explicit = grasp_scores(model, masks, data, second_order=second_order)
    assert_same_scores(fused_kernel, explicit)
    assert all(float(s.abs().sum()) > 0 for s in fused_kernel.values())  # q and k get second-order scores too


def test_grasp_fused_second_order_equals_autograd_on_vit():
    # the ViT's patch embedding is a Conv2d: the fused double backward runs through it and the attention
    model, data = tiny_vit(), batches()
    masks = pk.MaskSet.from_model(model)
    assert_same_scores(grasp_scores(model, masks, data, second_order="fused"),
                       grasp_scores(model, masks, data, second_order="autograd"))


def test_prospr_on_vit_equals_explicit_softmax_attention(monkeypatch):
    model, [(x, y)] = tiny_vit(), batches(1)
    masks = pk.MaskSet.from_model(model)
    kernel = prospr_scores(model, masks, x, y, steps=2)
    monkeypatch.setattr(SelfAttention, "forward", explicit_attention)
    assert_same_scores(kernel, prospr_scores(model, masks, x, y, steps=2))


class MHANet(nn.Module):
    """Tokens -> nn.MultiheadAttention -> linear head; ``need_weights=True`` makes torch compute the
    attention explicitly (bmm + softmax), ``False`` calls ``scaled_dot_product_attention``."""

    def __init__(self, need_weights: bool):
        super().__init__()
        self.need_weights = need_weights
        self.embed = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=self.need_weights)
        return self.head((h + a).mean(1))


def test_grasp_and_prospr_through_multihead_attention_match_its_explicit_path():
    torch.manual_seed(0)
    sdpa = MHANet(need_weights=False).double().eval()
    explicit = MHANet(need_weights=True).double().eval()
    explicit.load_state_dict(sdpa.state_dict())
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 5, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
    a, b = pk.MaskSet.from_model(sdpa), pk.MaskSet.from_model(explicit)
    assert "attn.out_proj.weight" in a
    assert_same_scores(grasp_scores(sdpa, a, [(x, y)]), grasp_scores(explicit, b, [(x, y)]))
    assert_same_scores(prospr_scores(sdpa, a, x, y), prospr_scores(explicit, b, x, y))


def test_math_kernel_only_inside_the_scorer():
    model, data = tiny_vit(), batches(1)
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled())
    grasp_scores(model, pk.MaskSet.from_model(model), data)
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()) == before
    # outside the scorer the default kernels are back: the fused CPU kernel has no double backward
    x = torch.randn(1, 2, 4, 8, requires_grad=True)
    (g,) = torch.autograd.grad(F.scaled_dot_product_attention(x, x, x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.autograd.grad(g.sum(), x)


def test_grasp_and_prospr_methods_on_the_zoo_vit():
    model = pk.models.create("vit_small_patch4", num_classes=10)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]
    ctx = PruneContext(batches=data)
    for name, extra in (("grasp", {"num_samples": 8}), ("prospr", {"num_samples": 8, "inner_steps": 1})):
        pruner = pk.create(name, model, sparsity=0.9, **extra)
        pruner.prune(ctx)
        assert pruner.masks.nnz() == pruner.masks.numel() - int(0.9 * pruner.masks.numel())


hf = pytest.importorskip("transformers")


def tiny_bert(attn_implementation):
    cfg = hf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3,
                        attn_implementation=attn_implementation)
    torch.manual_seed(0)
    return hf.BertForSequenceClassification(cfg).double().eval()


def test_grasp_on_hf_bert_sdpa_equals_eager_attention():
    sdpa, eager = tiny_bert("sdpa"), tiny_bert("eager")
    eager.load_state_dict(sdpa.state_dict())
    g = torch.Generator().manual_seed(3)
    data = [(torch.randint(0, 50, (4, 7), generator=g), torch.randint(0, 3, (4,), generator=g))]
    a, b = pk.MaskSet.from_model(sdpa), pk.MaskSet.from_model(eager)
    assert_same_scores(grasp_scores(sdpa, a, data), grasp_scores(eager, b, data))
