"""``structured`` + compact export on models outside the zoo: a torchvision-style ResNet, a MobileNet-style
depthwise/grouped net, ViTs (``nn.MultiheadAttention`` and the zoo's), tiny Hugging Face BERT and GPT-2.

Attention is sharpened (Q and K scaled by 20) so softmax is peaked: a compact model that regroups
channels into the wrong heads then differs visibly (the negative control below), and parity is relative:
max |masked - compact| <= 1e-5 * max |output|. The matrix runs in float64, where an exact compact model
differs by ~1e-14 relative: in float32, seven sharpened attention layers (the zoo ViT) already round to
2.4e-5 (see docs/structured.md); the shallow models are also checked in float32.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import ModelError
from prunekit.export import compact_model, rebuild_compact
from prunekit.export.heads import HeadPrunedMultiheadAttention
from prunekit.methods import PruneContext
from prunekit.modelio import call_model, logits_of
from prunekit.models import create
from tests.test_export_compact import randomize_norms_

pytest.importorskip("torch_pruning")
transformers = pytest.importorskip("transformers")

RTOL = 1e-5
SHARP = 20.0


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: a ``downsample`` (1x1 conv + BN) branch where the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class MobileNetish(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 blocks and one grouped 3x3 conv (groups=4)."""

    def __init__(self):
        super().__init__()

        def dw(c, s):
            return nn.Sequential(nn.Conv2d(c, c, 3, s, 1, groups=c), nn.BatchNorm2d(c), nn.ReLU())

        def pw(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.features = nn.Sequential(dw(16, 1), pw(16, 32), dw(32, 2), pw(32, 64),
                                      nn.Conv2d(64, 64, 3, 1, 1, groups=4, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      dw(64, 2), pw(64, 64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(self.stem(x)), 1).flatten(1))


class MHAViT(nn.Module):
    """Pre-norm encoder on 4x4 patches with ``nn.MultiheadAttention`` (dim 32, 4 heads, 2 blocks)."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln1=nn.LayerNorm(dim), attn=nn.MultiheadAttention(dim, heads, batch_first=True), ln2=nn.LayerNorm(dim),
            mlp=nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim)))) for _ in range(2))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            h = b["ln1"](x)
            x = x + b["attn"](h, h, h, need_weights=False)[0]
            x = x + b["mlp"](b["ln2"](x))
        return self.head(self.ln(x).mean(1))


def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


@torch.no_grad()
def sharpen_(model):
    """Scale every query and key projection (weights and biases) by SHARP."""
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            m.in_proj_weight[:2 * m.embed_dim] *= SHARP
            m.in_proj_bias[:2 * m.embed_dim] *= SHARP
        elif type(m).__name__ == "Conv1D" and name.endswith("attn.c_attn"):
            m.weight[:, :2 * m.weight.shape[1] // 3] *= SHARP
            m.bias[:2 * m.weight.shape[1] // 3] *= SHARP
        elif name.rpartition(".")[2] in ("query", "key", "q", "k", "q_proj", "k_proj") and isinstance(m, nn.Linear):
            m.weight *= SHARP
            if m.bias is not None:
                m.bias *= SHARP




def images(n=4, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tokens(n=4, seed=0):
    return torch.randint(0, 100, (n, 12), generator=torch.Generator().manual_seed(seed))


MODELS = {
    "resnet_downsample": (TinyResNet, images),
    "mobilenet_grouped": (MobileNetish, images),
    "vit_mha": (MHAViT, images),
    "vit_small_patch4": (lambda: create("vit_small_patch4"), lambda n=2, seed=0: images(n, 32, seed)),
    "bert": (tiny_bert, tokens),
    "gpt2": (tiny_gpt2, tokens),
}


def build(name, dtype=torch.float64):
    torch.manual_seed(0)
    make, inputs = MODELS[name]
    model = make().eval().to(dtype)
    randomize_norms_(model)
    sharpen_(model)
    return model, lambda *a, **k: (lambda x: x.to(dtype) if x.is_floating_point() else x)(inputs(*a, **k))


def relative_diff(a, b, x):
    with torch.no_grad():
        ref = logits_of(call_model(a, x))
        return float((logits_of(call_model(b, x)) - ref).abs().max() / ref.abs().max())


def pruned(name, sparsity=0.5, dtype=torch.float64):
    model, inputs = build(name, dtype)
    pruner = pk.create("structured", model, sparsity=sparsity)
    pruner.prune(PruneContext(batches=[(inputs(), None)]))
    return model, inputs, pruner


@pytest.mark.parametrize("dtype, name", [("float64", n) for n in MODELS] +
                         [("float32", n) for n in ("resnet_downsample", "mobilenet_grouped", "vit_mha", "bert", "gpt2")])
def test_compact_equals_masked_with_sharpened_attention(dtype, name):
    model, inputs, pruner = pruned(name, dtype=getattr(torch, dtype))
    result = compact_model(model, pruner.masks, inputs())
    # the pruner's model *is* the masked model (masks and side masks enforced); fresh inputs
    assert relative_diff(model, result.model, inputs(seed=3)) <= RTOL
    assert result.params_after < 0.75 * result.params_before
    assert sum(result.coupled.values()) == 0


def attention_modules(model, kind):
    return [m for m in model.modules() if type(m).__name__ == kind]


def test_bert_loses_whole_heads_and_keeps_its_attributes_consistent():
    model, inputs, pruner = pruned("bert")
    c = compact_model(model, pruner.masks, inputs()).model
    for att in attention_modules(c, "BertSelfAttention"):
        assert att.num_attention_heads == 2 and att.attention_head_size == 8 and att.all_head_size == 16
        assert att.query.out_features == att.key.out_features == att.value.out_features == 16
    for out in attention_modules(c, "BertSelfOutput"):
        assert out.dense.in_features == 16 and out.dense.out_features == 32
    # whole heads in the masks: each head's 8 query rows are all kept or all removed
    q = pruner.masks["bert.encoder.layer.0.attention.self.query.weight"].any(1).view(4, 8)
    assert torch.equal(q.all(1), q.any(1)) and int(q.all(1).sum()) == 2


def test_gpt2_conv1d_heads_and_mlp():
    model, inputs, pruner = pruned("gpt2")
    c = compact_model(model, pruner.masks, inputs()).model
    for block in c.transformer.h:
        assert block.attn.num_heads == 2 and block.attn.split_size == 16 and block.attn.head_dim == 8
        assert tuple(block.attn.c_attn.weight.shape) == (32, 48) and block.attn.c_attn.nf == 48
        assert tuple(block.attn.c_proj.weight.shape) == (16, 32)
        assert tuple(block.mlp.c_fc.weight.shape) == (32, 64)  # MLP channels: Conv1D [in, out]
    # the tied lm_head / wte embedding stays whole
    assert c.lm_head.weight is c.transformer.wte.weight and c.lm_head.out_features == 100


@torch.no_grad()
def test_grouped_query_attention_loses_whole_key_value_groups():
    """Llama-style GQA (4 query heads, 2 key/value heads): a unit is a kv head and its 2 query heads.
    Masking unit 1's value rows and removing it gives the same outputs (head surgery only: building
    Torch-Pruning's graph of a Llama model takes minutes, so the structured method is not run here)."""
    from prunekit.export.heads import remove_units_
    from prunekit.structure.heads import dead_units, find_attention

    torch.manual_seed(0)
    model = tiny_llama().eval().double()
    sharpen_(model)
    (att, *_) = find_attention(model)
    assert (att.kind, att.units, att.num_heads, att.head_dim) == ("llama", 2, 4, 8)
    q, k = (next(s for s in att.weights() if s.part == p) for p in ("q", "k"))
    assert att.indices(q, [1]).tolist() == list(range(16, 32)) and att.indices(k, [1]).tolist() == list(range(8, 16))
    masks = {f"{att.name}.v_proj.weight": torch.ones(16, 32, dtype=torch.bool)}
    masks[f"{att.name}.v_proj.weight"][8:] = False
    assert dead_units(att, masks).tolist() == [False, True]
    model.get_submodule(f"{att.name}.v_proj").weight[8:] = 0
    x = tokens()
    ref = model(x).logits
    remove_units_(model, att, [1])
    layer = model.get_submodule(att.name)
    assert layer.q_proj.out_features == 16 and layer.k_proj.out_features == 8 and layer.o_proj.in_features == 16
    assert layer.num_key_value_groups == 2
    assert float((model(x).logits - ref).abs().max() / ref.abs().max()) <= 1e-12


def test_multihead_attention_is_replaced_by_a_head_pruned_module():
    model, inputs, pruner = pruned("vit_mha")
    c = compact_model(model, pruner.masks, inputs()).model
    for b in c.blocks:
        att = b["attn"]
        assert isinstance(att, HeadPrunedMultiheadAttention) and att.num_heads == 2 and att.embed_dim == 32
        assert tuple(att.in_proj_weight.shape) == (48, 32) and tuple(att.out_proj.weight.shape) == (32, 16)
    # the call conventions of nn.MultiheadAttention: masks, weights of the original heads, sequence-first
    orig, new = model.blocks[0]["attn"], c.blocks[0]["attn"]
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        for kw in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"average_attn_weights": False}):
            (y0, w0), (y1, w1) = orig(x, x, x, **kw), new(x, x, x, **kw)
            assert float((y0 - y1).abs().max()) <= 1e-5 * float(y0.abs().max())
            assert torch.allclose(w0, w1, atol=1e-6)
        seq = copy.deepcopy(orig)
        seq.batch_first = False
        new.batch_first = False
        xs = x.transpose(0, 1)
        assert torch.allclose(seq(xs, xs, xs)[0], new(xs, xs, xs)[0], atol=1e-5)


def test_zoo_vit_heads():
    model, inputs, pruner = pruned("vit_small_patch4")
    c = compact_model(model, pruner.masks, inputs()).model
    assert all(b.self_attention.heads == 2 and b.self_attention.q.out_features == 128 for b in c.blocks)
    assert all(b.mlp[0].out_features == 256 for b in c.blocks)


def test_depthwise_and_grouped_convs_lose_channels():
    model, inputs, pruner = pruned("mobilenet_grouped")
    result = compact_model(model, pruner.masks, inputs())
    f = result.model.features
    assert f[0][0].out_channels == f[0][0].groups == 8  # depthwise 16 -> 8, with the stem
    assert f[3][0].out_channels == 32 and f[4].groups == 4  # grouped conv keeps 4 groups ...
    assert f[4].in_channels == 32 and f[4].out_channels == 32  # ... of 8 channels each
    # the grouped conv's readers lose the same position in every conv group
    gone = ~pruner.masks["features.3.0.weight"].reshape(64, -1).any(1)
    assert torch.equal(gone.view(4, 16), gone.view(4, 16)[:1].expand(4, 16))
    assert result.params_after < 0.4 * result.params_before


def test_fine_tuned_bert_still_exports_exactly_and_rebuilds():
    model, inputs, pruner = pruned("bert")
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    model.train()
    for seed in range(3):
        opt.zero_grad()
        F.cross_entropy(model(tokens(seed=seed)).logits, torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
    model.eval()
    result = compact_model(model, pruner.masks, inputs())
    assert relative_diff(model, result.model, inputs(seed=5)) <= RTOL
    fresh = tiny_bert().eval().double()
    rebuild_compact(fresh, result.history, inputs()).load_state_dict(result.model.state_dict())
    assert relative_diff(result.model, fresh, inputs(seed=6)) == 0.0


@torch.no_grad()
def test_regrouped_heads_are_caught_by_the_relative_check():
    """Negative control: keep [3, 5, 4, 4] of each head's 8 rows and pack the 16 survivors into 2 heads
    (what a channel-level compact does). With sharpened attention it differs far beyond the tolerance;
    compact export of the same masks keeps the 4 heads (nothing to remove exactly) and matches."""
    model, inputs = build("bert")
    att = model.bert.encoder.layer[0].attention
    keep = torch.cat([torch.arange(h * 8, h * 8 + n) for h, n in enumerate([3, 5, 4, 4])])
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.endswith("weight")
             and p.dim() == 2 and "embeddings" not in n}
    for proj in ("query", "key", "value"):
        m = masks[f"bert.encoder.layer.0.attention.self.{proj}.weight"]
        m[:] = False
        m[keep] = True
        getattr(att.self, proj).bias[~torch.isin(torch.arange(32), keep)] = 0
    masks["bert.encoder.layer.0.attention.output.dense.weight"][:, ~torch.isin(torch.arange(32), keep)] = False
    for n, p in model.named_parameters():
        if n in masks:
            p.mul_(masks[n])
    wrong = copy.deepcopy(model)
    s = wrong.bert.encoder.layer[0].attention.self
    for proj in ("query", "key", "value"):
        lin = getattr(s, proj)
        lin.weight, lin.bias = nn.Parameter(lin.weight[keep]), nn.Parameter(lin.bias[keep])
        lin.out_features = 16
    dense = wrong.bert.encoder.layer[0].attention.output.dense
    dense.weight = nn.Parameter(dense.weight[:, keep])
    s.num_attention_heads, s.all_head_size = 2, 16
    hidden = lambda m: m.bert(tokens(seed=4)).last_hidden_state  # noqa: E731
    ref = hidden(model)
    assert float((hidden(wrong) - ref).abs().max() / ref.abs().max()) > 100 * RTOL
    result = compact_model(model, masks, inputs())
    assert result.model.bert.encoder.layer[0].attention.self.num_attention_heads == 4
    assert relative_diff(model, result.model, inputs(seed=4)) <= RTOL


def test_relative_parity_bound():
    from prunekit.export.compact import parity_tolerance

    assert parity_tolerance(torch.tensor([130.0, -2.0]), 1e-5, 0.0) == pytest.approx(1.3e-3)
    assert parity_tolerance(torch.tensor([-0.5]), 1e-5, 1e-7) == pytest.approx(1e-7 + 5e-6)


def test_a_request_that_removes_nothing_is_an_error():
    with pytest.raises(ModelError, match="no channel group or attention head"):
        pk.create("structured", nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), sparsity=0.5,
                  input_shape=(3, 4)).prune()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(ModelError, match="removes no channel"):
        pk.create("structured", model, sparsity=0.1, input_shape=(1, 8, 8)).prune()  # keeps 4 of 4


def test_multihead_attention_with_its_own_key_dims_is_refused():
    model = MHAViT()
    model.blocks[0]["attn"] = nn.MultiheadAttention(32, 4, batch_first=True, add_zero_attn=True)
    with pytest.raises(ModelError, match="add_zero_attn"):
        pk.create("structured", model, sparsity=0.5, input_shape=(3, 16, 16)).prune()
