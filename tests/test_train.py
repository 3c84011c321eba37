"""Trainer: LR schedules, durations, exact in-process resume, safe checkpoints, NaN handling."""
import math
import pickle

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError, NumericError
from prunekit.experiments import build_config
from prunekit.train import Trainer, TrainConfig, load_checkpoint, lr_factor_fn, parse_duration


class ToyLoader:
    """Deterministic per-epoch shuffling, like the real tensor loaders."""

    def __init__(self, x, y, bs, seed=0):
        self.x, self.y, self.bs, self.seed, self.epoch = x, y, bs, seed, 0

    def set_epoch(self, e):
        self.epoch = e

    def __len__(self):
        return math.ceil(len(self.x) / self.bs)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        perm = torch.randperm(len(self.x), generator=g)
        for i in range(0, len(perm), self.bs):
            idx = perm[i : i + self.bs]
            yield self.x[idx], self.y[idx]


def toy_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 12, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    return ToyLoader(x, y, 32), ToyLoader(x, y, 100)


def toy_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))


def test_durations():
    assert parse_duration("160ep") == (160, "ep")
    assert parse_duration("50000it") == (50000, "it")
    assert parse_duration(3) == (3, "ep")
    with pytest.raises(ValueError):
        parse_duration("10 epochs")
    with pytest.raises(ValueError):
        parse_duration("0ep")


def test_lr_schedules_by_hand():
    spe = 10
    ms = lr_factor_fn(TrainConfig(duration="160ep", schedule="multistep", milestones=[80, 120]), spe, 1600)
    assert ms(0) == 1.0 and ms(799) == 1.0
    assert ms(800) == pytest.approx(0.1) and ms(1199) == pytest.approx(0.1) and ms(1200) == pytest.approx(0.01)
    cos = lr_factor_fn(TrainConfig(duration="4ep", schedule="cosine"), spe, 40)
    assert [cos(s) for s in (0, 10, 20, 30)] == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                                (1 + math.cos(3 * math.pi / 4)) / 2])
    bip = lr_factor_fn(TrainConfig(duration="100ep", schedule="cosine_bip"), spe, 1000)
    # BiP utils/schedules.py: epoch 0 -> 0.5 * (1 + cos(-pi/100)); epoch 1 -> 1.0
    assert bip(0) == pytest.approx(0.5 * (1 + math.cos(-math.pi / 100)))
    assert bip(10) == pytest.approx(1.0)
    wc = lr_factor_fn(TrainConfig(duration="1000it", schedule="warmup_cosine", warmup_steps=100), spe, 1000)
    assert wc(0) == 0.0 and wc(50) == pytest.approx(0.5) and wc(100) == pytest.approx(1.0)
    assert wc(550) == pytest.approx(0.5) and wc(1000) == pytest.approx(0.0, abs=1e-12)


def test_train_config_rejects_bad_values():
    for bad in ({"duration": "-3ep"}, {"lr": -0.1}, {"schedule": "multistep"}, {"optimizer": "lion"}):
        with pytest.raises(ConfigError):
            build_config({"model": {"name": "mlp"}, "train": bad})


def _run(tmp_path, epochs, resume_from=None, ckpt_name="ck.pt"):
    train, test = toy_problem()
    model = toy_model()
    pruner = pk.create("random", model, sparsity=0.5, seed=0)
    pruner.on_init(None)
    ckpt = tmp_path / ckpt_name
    trainer = Trainer(model, train, test, TrainConfig(duration=f"{epochs}ep", lr=0.1, schedule="cosine"),
                      pruner=pruner, checkpoint_path=ckpt, metrics_path=tmp_path / "m.jsonl")
    return trainer, model, pruner


def test_resume_is_exact(tmp_path):
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    trainer, model, pruner = _run(full_dir, 4)
    trainer.fit()
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_hist = trainer.history

    part_dir = tmp_path / "part"
    part_dir.mkdir()
    trainer, model, _ = _run(part_dir, 4)
    trainer.total_steps = 2 * trainer.steps_per_epoch  # stop after two epochs, as a kill would
    trainer.fit()
    torch.manual_seed(12345)  # disturb the RNG: resume must restore it
    trainer, model, pruner = _run(part_dir, 4)
    trainer.fit()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert trainer.history == ref_hist
    lines = (part_dir / "m.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_pruned_weights_stay_zero_through_training(tmp_path):
    trainer, model, pruner = _run(tmp_path, 2)
    trainer.fit()
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p[~m]) == 0
    assert pruner.masks.sparsity() == pytest.approx(0.5, abs=1e-3)


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        load_checkpoint(bad)
    torch.save({"x": Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="evil2.pt"):
        load_checkpoint(tmp_path / "evil2.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


class PoisonedLoader(ToyLoader):
    """Yields a NaN input from the second epoch on."""

    def __iter__(self):
        for x, y in super().__iter__():
            if self.epoch >= 1:
                x = x.clone()
                x[0, 0] = float("nan")
            yield x, y


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    train, test = toy_problem()
    train = PoisonedLoader(train.x, train.y, train.bs)
    ckpt = tmp_path / "ck.pt"
    trainer = Trainer(toy_model(), train, test, TrainConfig(duration="3ep", lr=0.1), checkpoint_path=ckpt)
    spe = trainer.steps_per_epoch
    with pytest.raises(NumericError, match=f"non-finite training loss at step {spe + 1};"):
        trainer.fit()
    assert load_checkpoint(ckpt)["step"] == spe  # the last good checkpoint is intact


def test_channels_last_and_bf16_autocast_train_a_cnn():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    loader = ToyLoader(x, y, 16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    pruner = pk.create("magnitude", model, sparsity=0.5, allocation="uniform", when="init")
    pruner.on_init(None)
    cfg = TrainConfig(duration="3ep", lr=0.05, channels_last=True, amp="bf16")
    summary = Trainer(model, loader, loader, cfg, pruner=pruner).fit()
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(summary["final_acc"]) and summary["steps"] == 12
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p[~m]) == 0
