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


# --- path methods on attention and on token-id models ----------------------------------------------------

from prunekit.diagnostics import effective_masks  # noqa: E402
from prunekit.errors import ModelError  # noqa: E402
from prunekit.scoring import PathCounter, synflow_scores  # noqa: E402
from prunekit.scoring.attention import attention_projections  # noqa: E402

ATTN = [f"blocks.{b}.self_attention.{p}.weight" for b in range(2) for p in "qkv"]


@pytest.mark.parametrize("explicit", [False, True])
def test_attention_projections_found_through_sdpa_and_explicit_softmax(monkeypatch, explicit):
    if explicit:
        monkeypatch.setattr(SelfAttention, "forward", explicit_attention)
    roles = attention_projections(tiny_vit().float(), torch.ones(1, 3, 8, 8))
    assert roles == {n: {"query" if ".q." in n else "key" if ".k." in n else "value"} for n in ATTN}


@pytest.mark.parametrize("attention, dense", [("reference", ATTN), ("paths", [n for n in ATTN if ".v." not in n])])
def test_dpai_on_vit_keeps_attention_dense_as_the_reference_and_every_other_layer_effective(attention, dense):
    model = tiny_vit().float()
    pruner = pk.create("dpai", model, sparsity=0.9, steps=20, seed=0, input_shape=(3, 8, 8), attention=attention)
    pruner.prune()
    assert sorted(pruner.kept_dense) == sorted(dense) and not set(dense) & set(pruner.masks.names())
    assert all(f"kept dense by dpai: {n}" in pruner.report() for n in dense)
    for n, m in pruner.masks.items():  # the ERK budgets over the remaining layers, exactly
        assert int(m.sum()) == m.numel() - int(pruner.layer_zeros()[pruner.masks.names().index(n)])
    eff = effective_masks(model, pruner.masks, (3, 8, 8))
    assert all(int(e.sum()) > 0 for e in eff.values())  # no layer left without an effective weight
    fresh = pk.create("dpai", tiny_vit().float(), sparsity=0.9, steps=20, seed=0, attention=attention)
    fresh.load_state_dict(pruner.state_dict())  # a resumed run narrows its masks the same way
    assert fresh.masks.names() == pruner.masks.names() and fresh.masks.checksum().equal(pruner.masks.checksum())


def test_phew_on_vit_walks_the_value_path_with_query_key_dense():
    model = tiny_vit().float()
    pruner = pk.create("phew", model, sparsity=0.8, seed=0, input_shape=(3, 8, 8))
    pruner.prune()
    assert sorted(pruner.kept_dense) == sorted(n for n in ATTN if ".v." not in n)
    assert pruner.masks.nnz() == pruner.masks.numel() - int(0.8 * pruner.masks.numel())
    assert all(int(m.sum()) > 0 for m in pruner.masks.values())


class TokenNet(nn.Module):
    """Token embedding + position embedding -> (LayerNorm) -> Linear -> mean over positions."""

    def __init__(self, vocab=5, dim=3, length=4, norm=False):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(length, dim)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.fc = nn.Linear(dim, 2)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        return self.fc(self.norm(h)).mean(1)


def test_path_count_starts_at_the_embedding_output():
    # every embedding dimension has V = 5 paths (one-hot Linear on all ones), positions add none:
    # 5 paths x 3 dims into each of 2 outputs at each of 4 positions, averaged over the positions -> 30
    model = TokenNet()
    with PathCounter(model, ["fc.weight"], (4,), dtype=torch.float64) as pc:
        assert float(pc.log_paths_unscaled([torch.ones(2, 3, dtype=torch.float64)])) == pytest.approx(math.log(30))


def test_synflow_on_token_ids_equals_the_one_hot_linear_model():
    torch.manual_seed(0)
    tokens = TokenNet(norm=True)

    class OneHot(nn.Module):  # the same network with the token embedding as a Linear over one-hot inputs
        def __init__(self):
            super().__init__()
            self.tok = nn.Linear(5, 3, bias=False)
            self.pos, self.norm, self.fc = tokens.pos, tokens.norm, tokens.fc

        def forward(self, x):
            return self.fc(self.norm(self.tok(x) + self.pos(torch.arange(x.shape[1])))).mean(1)

    onehot = OneHot()
    with torch.no_grad():
        onehot.tok.weight.copy_(tokens.tok.weight.t())
    a = synflow_scores(tokens, pk.MaskSet.from_model(tokens), (4,))["fc.weight"]
    b = synflow_scores(onehot, pk.MaskSet({"fc.weight": torch.ones(2, 3)}).bind(onehot), (4, 5))["fc.weight"]
    assert torch.allclose(a, b, rtol=1e-5) and float(a.min()) > 0  # the LayerNorm did not zero the count


def test_degenerate_path_counts_are_refused():
    zero_head = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    nn.init.zeros_(zero_head[2].weight)
    with pytest.raises(ModelError, match="every score is zero"):
        pk.create("synflow", zero_head, sparsity=0.5, input_shape=(4,), rounds=2).prune()

    class Killer(nn.Module):  # a module path counting does not know, mapping everything to zero
        def forward(self, x):
            return x * 0

    dead = nn.Sequential(nn.Linear(4, 4), Killer(), nn.Linear(4, 2))
    for name in ("dpai", "npb"):
        with pytest.raises(ModelError, match="path count of the dense network is zero or not finite"):
            pk.create(name, dead, sparsity=0.5, input_shape=(4,), seed=0).prune()


@pytest.mark.parametrize("name", ["synflow", "dpai", "phew", "npb"])
def test_data_free_methods_on_a_hf_token_model(name):
    cfg = hf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = hf.BertForSequenceClassification(cfg).eval()
    data = [(torch.randint(0, 50, (4, 7)), torch.randint(0, 3, (4,)))]
    settings = {"synflow": {"rounds": 3}, "dpai": {"steps": 10, "seed": 0}}.get(name, {"seed": 0})
    pruner = pk.create(name, model, sparsity=0.8, **settings)
    pruner.prune(PruneContext(batches=data))
    assert 0.79 < pruner.masks.sparsity() <= 0.8
    if name in ("dpai", "phew"):
        assert all(".attention.self.query." in n or ".attention.self.key." in n or ".attention.self.value." in n
                   for n in pruner.kept_dense)
    logits = model(data[0][0]).logits
    assert torch.isfinite(logits).all()


def test_dpai_vit_cifar10_recipe_runs_all_its_methods_end_to_end(tmp_path, monkeypatch):
    """``prunekit run dpai_vit_cifar10`` on a tiny CIFAR-10 in the original pickle format: every one of the
    recipe's 11 methods prunes the zoo ViT and trains (2 steps, one evaluation). Magnitude at init runs
    at compression 0.5: from 1.0 on, its global threshold removes the whole head (init bound 1/16), a
    layer collapse the runner refuses by design; the others at the recipe's compression 2.0."""
    import json
    import sqlite3

    import numpy as np
    import yaml

    from prunekit.cli import main
    from prunekit.data import testing as fx
    from prunekit.data.cifar import CIFAR_LAYOUTS
    from prunekit.experiments.recipes import load_recipe
    from prunekit.sparsity import MaskSet

    rng = np.random.default_rng(0)
    fx.write_cifar(tmp_path / "cifar", "cifar10",
                   (rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 40)),
                   (rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 8)))
    monkeypatch.setitem(CIFAR_LAYOUTS["cifar10"].__dict__, "counts",
                        {**{f"data_batch_{i}": 8 for i in range(1, 6)}, "test_batch": 8})  # the tiny files
    shrink = {"dpai": {"steps": 3}, "synflow": {"rounds": 2}, "iter_snip": {"rounds": 2},
              "prospr": {"inner_steps": 1, "num_samples": 8}, "snip": {"num_samples": 8}, "grasp": {"num_samples": 8}}
    methods = [{**m, "compression": 0.5 if m["name"] == "magnitude" else 2.0, **shrink.get(m["name"], {})}
               for m in load_recipe("dpai_vit_cifar10")["grid"]["method"]]
    assert len(methods) == 11
    root = tmp_path / "runs"
    code = main(["run", "dpai_vit_cifar10", f"output.root={root}", f"data.root={tmp_path / 'cifar'}",
                 "data.batch_size=8", "data.test_batch_size=8", "train.duration=2it", "train.warmup_steps=1",
                 "train.eval_every=2", "grid=" + json.dumps({"method": methods}), "-q"])
    assert code == 0
    rows = sqlite3.connect(root / "results.sqlite").execute("select method, status from runs").fetchall()
    assert sorted(rows) == sorted((m["name"], "finished") for m in methods)
    kept = {}
    for path in root.rglob("masks.safetensors"):
        method = yaml.safe_load((path.parent / "config.yaml").read_text())["method"]["name"]
        kept[method] = {n.split(".")[-2] for n in MaskSet.load(path).names() if ".self_attention." in n}
    assert kept["dpai"] == {"out"} and kept["phew"] == {"v", "out"} and kept["grasp"] == {"q", "k", "v", "out"}
