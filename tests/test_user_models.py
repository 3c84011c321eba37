"""A user's own model and dataset: by import path from a recipe and the plain CLI, entry points, and
Hugging Face architectures from config fields or a local save_pretrained folder."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError

MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    def tiny_net(num_classes=10, width=32):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))

    def blobs():
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 3, (300,), generator=g)
        noise = torch.randint(0, 40, (300, 1, 8, 8), generator=g)
        images = (labels.view(-1, 1, 1, 1) * 60 + noise).to(torch.uint8)
        return {"train": (images[:240], labels[:240]), "test": (images[240:], labels[240:])}
''')

RECIPE = textwrap.dedent('''
    name: own
    seed: 0
    model: {name: "mynets:tiny_net", kwargs: {width: 16}}
    data: {name: "mynets:blobs", batch_size: 32, augment: false}
    train: {duration: 10ep, optimizer: sgd, lr: 0.1, momentum: 0.9}
    method: {name: snip, sparsity: 0.5}
    output: {root: runs}
''')


def _prunekit(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = Path(sys.executable).with_name("prunekit")
    return subprocess.run([str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_recipe_with_model_and_dataset_by_import_path_runs_from_the_cli(tmp_path):
    (tmp_path / "mynets.py").write_text(MODULE)
    (tmp_path / "own.yaml").write_text(RECIPE)
    done = _prunekit(tmp_path, "run", "own.yaml")
    assert done.returncode == 0, done.stderr
    (result,) = list((tmp_path / "runs" / "own").glob("snip-*/result.json"))
    row = json.loads(result.read_text())
    assert row["final_acc"] > 50.0  # three separable classes, chance is 33 %
    assert abs(row["achieved_sparsity"] - 0.5) < 1e-3


def test_bad_import_path_is_one_line(tmp_path):
    (tmp_path / "mynets.py").write_text(MODULE)
    (tmp_path / "own.yaml").write_text(RECIPE.replace("mynets:tiny_net", "nosuchmodule:net"))
    done = _prunekit(tmp_path, "run", "own.yaml")
    assert done.returncode == 2
    assert "nosuchmodule" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_entry_point_model(monkeypatch):
    from prunekit import plugins

    class EP:
        name = "my_entry_net"

        @staticmethod
        def load():
            return lambda num_classes=10: torch.nn.Linear(4, num_classes)

    monkeypatch.setattr(plugins, "entry_points", lambda group: [EP] if group == "prunekit.models" else [])
    model = pk.models.create("my_entry_net", num_classes=3)
    assert model.out_features == 3
    with pytest.raises(ConfigError, match="unknown model"):
        pk.models.create("not_an_entry")


def test_hf_architecture_from_config_and_local_folder(tmp_path):
    pytest.importorskip("transformers") if os.environ.get("CI") != "true" else None
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = pk.models.create("hf:BertForSequenceClassification", num_classes=3, **fields)
    assert model.config.num_labels == 3 and model.config.hidden_size == 16
    model.save_pretrained(tmp_path / "bert")
    again = pk.models.create("hf:BertForSequenceClassification", num_classes=3, pretrained=str(tmp_path / "bert"))
    x = torch.randint(0, 50, (2, 5))
    model.eval(), again.eval()
    torch.testing.assert_close(model(x).logits, again(x).logits)
    with pytest.raises(ConfigError, match="no model class"):
        pk.models.create("hf:NoSuchArchitecture")
    with pytest.raises(ConfigError, match="not a folder"):
        pk.models.create("hf:BertForSequenceClassification", pretrained=str(tmp_path / "missing"))
