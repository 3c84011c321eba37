"""MaskSet: construction, targets, in-place enforcement, optimizer state, persistence."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, MaskError
from prunekit.sparsity import MaskSet, Targets, mask_optimizer_state_, reset_optimizer_state_, select
from prunekit.sparsity.targets import resolve_targets


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
        self.shortcut = nn.Sequential(nn.Conv2d(4, 4, 1))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.bn(self.conv1(x))
        x = self.block(x) + self.shortcut(x)
        return self.fc(x.mean((2, 3)))


def test_default_targets_are_conv_linear_weights_only():
    names = list(Targets().select(Tiny()))
    assert names == ["conv1.weight", "block.0.weight", "shortcut.0.weight", "fc.weight"]


def test_target_options():
    m = Tiny()
    assert list(Targets(keep_first_dense=True, keep_last_dense=True).select(m)) == ["block.0.weight", "shortcut.0.weight"]
    assert "shortcut.0.weight" not in resolve_targets("lap").select(m)
    assert list(Targets(exclude=("fc.*",)).select(m))[-1] == "shortcut.0.weight"
    assert list(Targets(include=("block.*",)).select(m)) == ["block.0.weight"]
    assert list(resolve_targets({"preset": "default", "layers": "conv"}).select(m))[-1] == "shortcut.0.weight"
    with pytest.raises(ConfigError, match="did you mean 'lap'"):
        resolve_targets("lapp")
    with pytest.raises(ConfigError, match="unknown field 'keep_frist_dense'"):
        resolve_targets({"keep_frist_dense": True})


def test_apply_zeroes_masked_weights_in_place_and_stats():
    model = Tiny()
    masks = MaskSet.from_model(model)
    weight_ids = [id(p) for p in masks.params]
    mask_ids = [id(m) for m in masks.values()]
    new = select({n: p.abs() for n, p in zip(masks.names(), masks.params)}, sparsity=0.5, allocation="uniform")
    masks.update_(new)
    masks.apply_()
    for p, m in zip(masks.params, masks.values()):
        assert (p[~m] == 0).all()
    assert [id(m) for m in masks.values()] == mask_ids  # never rebound
    assert [id(p) for p in masks.params] == weight_ids
    numel = sum(p.numel() for p in masks.params)
    expected_nnz = sum(p.numel() - int(0.5 * p.numel()) for p in masks.params)
    assert masks.nnz() == expected_nnz and masks.numel() == numel
    assert masks.sparsity() == pytest.approx(1 - expected_nnz / numel)
    assert masks.per_layer()["fc.weight"]["nnz"] == 4


def test_apply_sees_later_in_place_mask_changes():
    model = Tiny()
    masks = MaskSet.from_model(model)
    masks.apply_()  # builds the float factor cache
    masks["fc.weight"][0, 0] = False  # mutate in place afterwards
    masks.apply_()
    assert model.fc.weight[0, 0] == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.floats(0.0, 0.99))
def test_property_apply_leaves_masked_weights_exactly_zero(seed, density):
    torch.manual_seed(seed)
    model = Tiny()
    masks = MaskSet.from_model(model)
    masks.update_({n: torch.rand(m.shape) < density for n, m in masks.items()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # make sure masked entries are non-zero before enforcement
    masks.apply_()
    for p, m in zip(masks.params, masks.values()):
        assert torch.count_nonzero(p[~m]) == 0


def test_training_step_with_enforcement_keeps_zeros():
    model = Tiny()
    masks = MaskSet.from_model(model)
    masks.update_({n: torch.rand(m.shape) < 0.3 for n, m in masks.items()})
    masks.apply_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 6, 6)).sum().backward()
        opt.step()
        masks.apply_()
        mask_optimizer_state_(opt, masks)
    for p, m in zip(masks.params, masks.values()):
        assert torch.count_nonzero(p[~m]) == 0
        assert torch.count_nonzero(opt.state[p]["momentum_buffer"][~m]) == 0


def test_adam_state_masked_and_regrown_reset():
    model = Tiny()
    masks = MaskSet.from_model(model)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    regrown = {"fc.weight": torch.zeros(2, 4, dtype=torch.bool)}
    regrown["fc.weight"][1, 2] = True
    reset_optimizer_state_(opt, masks, regrown)
    st_ = opt.state[model.fc.weight]
    assert st_["exp_avg"][1, 2] == 0 and st_["exp_avg_sq"][1, 2] == 0
    assert st_["exp_avg_sq"][0, 0] != 0
    masks["conv1.weight"].zero_()
    mask_optimizer_state_(opt, masks)
    assert torch.count_nonzero(opt.state[model.conv1.weight]["exp_avg"]) == 0


def test_save_load_round_trip_exact(tmp_path):
    model = Tiny()
    masks = MaskSet.from_model(model)
    masks.update_({n: torch.rand(m.shape) < 0.4 for n, m in masks.items()})
    path = masks.save(tmp_path / "masks.safetensors")
    report = json.loads((tmp_path / "masks.json").read_text())
    assert report["nnz"] == masks.nnz()
    loaded = MaskSet.load(path, model=Tiny())
    assert loaded.names() == masks.names()
    for n in masks:
        assert torch.equal(loaded[n], masks[n]) and loaded[n].dtype == torch.bool
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written left behind


def test_mismatched_load_names_the_parameter(tmp_path):
    masks = MaskSet.from_model(Tiny())
    path = masks.save(tmp_path / "m.safetensors")

    class Other(Tiny):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

    with pytest.raises(MaskError, match="fc.weight.*shape"):
        MaskSet.load(path, model=Other())

    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)

    with pytest.raises(MaskError, match="conv1.weight"):
        MaskSet.load(path, model=Renamed())
    state = masks.state_dict()
    state.pop("fc.weight")
    with pytest.raises(MaskError, match="fc.weight"):
        MaskSet.from_model(Tiny()).load_state_dict(state)


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3 + b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        MaskSet.load(bad)
    with pytest.raises(CheckpointError, match="not found"):
        MaskSet.load(tmp_path / "missing.safetensors")


def test_checksum_changes_with_mask():
    masks = MaskSet.from_model(Tiny())
    a = masks.checksum()
    masks["fc.weight"][0, 1] = False
    assert masks.checksum() != a


def test_checksum_sees_any_single_flip_including_the_first_position():
    masks = MaskSet({"w": torch.ones(4, 300, dtype=torch.bool)})
    base = masks.checksum()
    for i in (0, 1, 299, 1199):
        m = masks.copy()
        m["w"].view(-1)[i] = False
        assert m.checksum() != base, i
