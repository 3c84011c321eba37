"""Targets beyond conv/linear: HF Conv1D, nn.MultiheadAttention, embeddings, globs, tied parameters."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.sparsity.targets import Targets, unit_dim

transformers = pytest.importorskip("transformers")


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def test_gpt2_conv1d_targets_and_tied_head():
    model = gpt2()
    rows = {r.name: r for r in Targets().explain(model)}
    assert rows["transformer.h.0.attn.c_attn.weight"].pruned
    assert rows["transformer.h.0.mlp.c_fc.weight"].pruned
    wte = rows["transformer.wte.weight"]
    assert not wte.pruned and wte.tied == ("lm_head.weight",) and "targets.embeddings=true" in wte.reason
    assert "lm_head.weight" not in rows  # one row (and at most one mask) per tensor


def test_tied_tensor_one_mask_counted_once_enforced_on_both_names():
    model = gpt2()
    pruner = pk.create("magnitude", model, sparsity=0.5, targets={"embeddings": True})
    pruner.prune()
    assert "transformer.wte.weight" in pruner.masks and "lm_head.weight" not in pruner.masks
    unique = sum(p.numel() for p in pruner.masks.params)
    assert pruner.masks.numel() == unique
    assert pruner.masks.nnz() == unique - int(0.5 * unique)
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randint(0, 64, (2, 8))
    opt.zero_grad()
    model(x, labels=x).loss.backward()
    opt.step()
    mask = pruner.masks["transformer.wte.weight"]
    assert torch.count_nonzero(model.lm_head.weight[~mask]) == 0
    assert torch.count_nonzero(model.transformer.wte.weight[~mask]) == 0
    assert "tied: lm_head.weight" in pruner.report()


def test_multihead_attention_in_proj_is_a_target():
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    names = list(Targets().select(layer))
    assert names == ["self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"]
    row = next(r for r in Targets().explain(layer) if r.name == "self_attn.in_proj_weight")
    assert "q, k, v packed" in row.reason
    with pytest.raises(ConfigError, match="packed attention projection"):
        unit_dim(layer, "self_attn.in_proj_weight", "filter")


def test_conv1d_units_are_on_its_transposed_axes():
    model = gpt2()
    assert unit_dim(model, "transformer.h.0.mlp.c_fc.weight", "filter") == 1
    assert unit_dim(model, "transformer.h.0.mlp.c_fc.weight", "channel") == 0
    imp = pk.create("imp", model, sparsity=0.5, structure="filter", allocation="uniform",
                    targets={"layers": "conv_linear"})
    imp.prune()
    m = imp.masks["transformer.h.0.mlp.c_fc.weight"]  # [in=16, out=64]: whole output columns go
    assert torch.equal(m.all(0) | ~m.any(0), torch.ones(64, dtype=torch.bool))
    assert int(m.any(0).sum()) == 32


def test_params_glob_adds_any_parameter_and_include_exclude_report_reasons():
    model = gpt2()
    t = Targets(params=("transformer.wpe.weight",), exclude=("*.c_proj.weight",))
    rows = {r.name: r for r in t.explain(model)}
    assert not rows["transformer.wpe.weight"].pruned  # an embedding: embeddings=false wins
    t2 = Targets(params=("*.ln_1.weight",), exclude=("*.c_proj.weight",))
    rows = {r.name: r for r in t2.explain(model)}
    assert rows["transformer.h.0.ln_1.weight"].pruned
    assert "targets.exclude" in rows["transformer.h.0.attn.c_proj.weight"].reason


def test_targets_command_lists_dense_with_reasons():
    exe = Path(sys.executable).with_name("prunekit")
    done = subprocess.run([str(exe), "targets", "hf:GPT2LMHeadModel", "--dense-only", "--kwargs",
                           '{"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 64}'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tied: lm_head.weight" in done.stdout and "c_attn.weight" not in done.stdout
    bad = subprocess.run([str(exe), "targets", "cifar_resnet20", "--targets", '{"layerz": "conv"}'],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "layerz" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
