"""Packed training (``prunekit.train.packed``): for every packable family, three runs trained as one pack
against the same three runs trained alone — step losses, masks, optimizer state, accuracies; a member
that fails stops alone; a killed pack resumes (packed or not) to the uninterrupted result; refusals."""
import math

import pytest
import torch

from prunekit.errors import PackError
from prunekit.experiments import build_config
from prunekit.experiments.runner import Built, _context
from prunekit.train import Trainer, build_optimizer, build_scheduler
from prunekit.train.packed import PackedTrainer, train_packed

STEPS = 50
BASE = {
    "model": {"name": "mlp", "kwargs": {"hidden": [32, 16]}},
    "data": {"name": "sklearn_digits", "batch_size": 32, "test_batch_size": 512, "augment": False},
    "train": {"duration": f"{STEPS}it", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "eval_every": 1,
              "schedule": "cosine"},
}
CONV = {  # LeNet-5 on synthetic 3x32x32 images with crop+flip: convolutions, channels_last, augmentation
    "model": {"name": "lenet5"},
    "data": {"name": "synthetic", "batch_size": 64, "test_batch_size": 256, "augment": True},
}
FAMILIES = {
    "dense": {"name": "dense"},
    "snip": {"name": "snip"},
    "grasp": {"name": "grasp"},
    "synflow": {"name": "synflow", "rounds": 5},
    "random_erk": {"name": "random", "allocation": "erk"},
    "omp": {"name": "magnitude", "when": "after"},
    "mp": {"name": "mp"},
    "lap": {"name": "lap"},
    "set": {"name": "set", "update_frequency": 10},
    "rigl": {"name": "rigl", "update_frequency": 10},
    "gmp": {"name": "gmp", "update_frequency": 10},
    "granet": {"name": "granet", "update_frequency": 10},
}
SPARSITIES = (0.5, 0.8, 0.9)


def _configs(method: dict, base: dict = BASE, seeds=(0, 1, 2), **train):
    out = []
    for seed, s in zip(seeds, SPARSITIES):
        m = dict(method) if method["name"] == "dense" else {**method, "sparsity": s}
        cfg = {**base, "train": {**base["train"], **train}, "seed": seed, "method": m}
        out.append(build_config(cfg))
    return out


def _trainer(cfg, checkpoint=None, progress=None) -> Trainer:
    """A run's training phase built as the runner builds it (pruning at init / after done first)."""
    built = Built(cfg)
    pruner = built.pruner
    if pruner.schedule != "none":
        ctx = _context(built)
        pruner.setup(ctx)
        pruner.prune(ctx) if pruner.schedule == "after" else pruner.on_init(ctx)
    return Trainer(built.model, built.train_loader, built.test_loader, cfg.train,
                   pruner=None if pruner.schedule == "none" else pruner, device=built.device,
                   checkpoint_path=checkpoint, progress=progress)


def _losses(trainer: Trainer) -> list[float]:
    return [r["train_loss"] for r in trainer.history]


def _masks(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {} if trainer.pruner is None else {k: v.clone() for k, v in trainer.pruner.masks.items()}


def _alone_and_packed(cfgs, kernels: str = "loop"):
    """The runs of ``cfgs`` trained one by one, and the same runs trained as one pack."""
    alone = [_trainer(c) for c in cfgs]
    for t in alone:
        t.fit()
    packed = [_trainer(c) for c in cfgs]
    outcomes = train_packed(packed, kernels)
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    return alone, packed, outcomes


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_equals_separate_runs(family):
    alone, packed, outcomes = _alone_and_packed(_configs(FAMILIES[family]))
    for a, p, o in zip(alone, packed, outcomes):
        la, lp = _losses(a), _losses(p)
        assert len(la) == len(lp) == STEPS
        assert torch.allclose(torch.tensor(lp), torch.tensor(la), rtol=1e-5, atol=0)
        ma, mp = _masks(a), _masks(p)
        assert ma.keys() == mp.keys() and all(torch.equal(ma[k], mp[k]) for k in ma)
        for (name, wa), wp in zip(a.model.state_dict().items(), p.model.state_dict().values()):
            assert torch.allclose(wa, wp, rtol=1e-4, atol=1e-6), name
        assert abs(o["final_acc"] - a.summary()["final_acc"]) <= 1.0  # within seed noise (360 test images)
        if a.pruner is not None:  # the pruned weights stayed exactly zero in the pack too
            assert all(bool((w[~m] == 0).all()) for w, m in zip(p.pruner.masks.params, p.pruner.masks.values()))
    # the members really differ (seeds, sparsities): the test would notice a pack that trained one run 3x
    assert len({round(_losses(p)[-1], 6) for p in packed}) == 3


def test_dst_masks_change_during_the_pack():
    cfgs = _configs(FAMILIES["rigl"])
    packed = [_trainer(c) for c in cfgs]
    start = [_masks(t) for t in packed]
    train_packed(packed)
    assert all(any(not torch.equal(s[k], _masks(t)[k]) for k in s) for s, t in zip(start, packed))


@pytest.mark.parametrize("method", [{"name": "snip"}, {"name": "structured", "when": "init"}])
def test_conv_members_pack_with_channels_last(method):
    base = {**BASE, **CONV}
    alone, packed, _ = _alone_and_packed(_configs(method, base=base, seeds=(0, 1), duration="12it"))
    assert all(t.channels_last for t in packed)
    for a, p in zip(alone, packed):
        assert torch.allclose(torch.tensor(_losses(p)), torch.tensor(_losses(a)), rtol=1e-5, atol=0)


def test_member_that_fails_stops_alone():
    cfgs = _configs(FAMILIES["snip"])
    packed = [_trainer(c) for c in cfgs]
    with torch.no_grad():
        next(packed[1].model.parameters()).fill_(math.inf)
    outcomes = PackedTrainer(packed).fit()
    assert isinstance(outcomes[1], Exception) and "non-finite" in str(outcomes[1])
    assert len(packed[1].history) == 0
    alone = [_trainer(cfgs[i]) for i in (0, 2)]
    for t, i in zip(alone, (0, 2)):
        t.fit()
        assert _losses(t) == pytest.approx(_losses(packed[i]), rel=1e-5)
        assert outcomes[i]["steps"] == STEPS


class _Kill(Exception):
    pass


def _killer(at: int):
    def progress(step: int, total: int) -> None:
        if step == at:
            raise _Kill
    return progress


def _killed_pack(family: str, tmp_path, kernels: str):
    """The runs trained alone, and the same runs as a pack killed at step 30 (checkpoints of step 20)."""
    cfgs = _configs(FAMILIES[family], eval_every=10)
    alone = [_trainer(c) for c in cfgs]
    for t in alone:
        t.fit()
    paths = [tmp_path / f"m{i}.pt" for i in range(3)]
    first = [_trainer(c, p, _killer(30) if i == 0 else None) for i, (c, p) in enumerate(zip(cfgs, paths))]
    with pytest.raises(_Kill):
        PackedTrainer(first, kernels).fit()
    assert all(torch.load(p, weights_only=True)["step"] == 20 for p in paths)
    return cfgs, alone, paths, first


@pytest.mark.parametrize("resume_packed", [True, False])
def test_killed_pack_resumes_to_the_uninterrupted_result(tmp_path, resume_packed):
    cfgs, alone, paths, _ = _killed_pack("set", tmp_path, "loop")
    again = [_trainer(c, p) for c, p in zip(cfgs, paths)]
    if resume_packed:
        train_packed(again)
    else:
        for t in again:
            t.fit()
    for a, r in zip(alone, again):
        assert _losses(r) == pytest.approx(_losses(a), rel=1e-5)
        assert all(torch.equal(_masks(a)[k], _masks(r)[k]) for k in _masks(a))


def test_refusals_are_one_line():
    bip = _trainer(_configs({"name": "bip"}, seeds=(0,))[0])
    ok = _trainer(_configs(FAMILIES["snip"], seeds=(0,))[0])
    with pytest.raises(PackError, match="train_step") as e:
        PackedTrainer([ok, bip])
    assert "\n" not in str(e.value)
    other = _trainer(_configs(FAMILIES["snip"], seeds=(1,), lr=0.01)[0])
    with pytest.raises(PackError, match="differ"):
        PackedTrainer([ok, other])
    with pytest.raises(PackError, match="shares? parameters"):
        PackedTrainer([ok, ok])


@pytest.mark.parametrize("schedule", [{"schedule": "constant"}, {"schedule": "cosine"}, {"schedule": "cosine_bip"},
                                      {"schedule": "multistep", "milestones": [1, 2], "gamma": 0.5},
                                      {"schedule": "warmup_cosine", "warmup_steps": 7}])
def test_lr_per_step_and_scheduler_state_are_lambdalrs(schedule):
    """The loops set the LR only where the schedule can change it; every step's LR and the checkpointed
    scheduler state are still exactly those of stepping ``LambdaLR`` once per step."""
    cfgs = _configs(FAMILIES["snip"], seeds=(0, 1), duration="100it", **schedule)  # 45 steps per epoch
    alone, packed = _trainer(cfgs[0]), [_trainer(c) for c in cfgs]
    alone.fit()
    train_packed(packed)
    opt = build_optimizer(cfgs[0].train, [torch.nn.Parameter(torch.zeros(1))])
    ref = build_scheduler(cfgs[0].train, opt, alone.steps_per_epoch, alone.total_steps)
    expected = []
    for _ in range(alone.total_steps):
        opt.step()
        ref.step()
        expected.append(opt.param_groups[0]["lr"])
    assert [r["lr"] for r in alone.history] == expected
    assert all([r["lr"] for r in t.history] == expected for t in packed)
    for t in (alone, *packed):
        assert t.scheduler.state_dict() == ref.state_dict()



STACKED = ["dense", "snip", "omp", "lap", "set", "rigl", "granet"]


@pytest.mark.parametrize("family", STACKED)
def test_stacked_kernels_agree_with_separate_runs(family):
    """One model with stacked parameters (vmap): the losses agree to rounding, the masks exactly."""
    alone, packed, _ = _alone_and_packed(_configs(FAMILIES[family]), kernels="stacked")
    w = [p.model.layers[0].weight for p in packed]  # the members' weights are slices of one stacked tensor
    assert len({x.untyped_storage().data_ptr() for x in w}) == 1 and w[0].untyped_storage().nbytes() == 3 * w[0].nbytes
    for a, p in zip(alone, packed):
        assert torch.allclose(torch.tensor(_losses(p)), torch.tensor(_losses(a)), rtol=1e-5, atol=0)
        ma, mp = _masks(a), _masks(p)
        assert all(torch.equal(ma[k], mp[k]) for k in ma)  # DST: no update here ties
        if a.pruner is not None:
            assert all(bool((w[~m] == 0).all()) for w, m in zip(p.pruner.masks.params, p.pruner.masks.values()))


def test_stacked_checkpoints_hold_one_member_and_resume(tmp_path):
    cfgs, alone, paths, first = _killed_pack("rigl", tmp_path, "stacked")
    state = torch.load(paths[1], weights_only=True)
    size = sum(v.numel() for v in state["model"].values())
    assert size == sum(p.numel() for p in first[1].model.parameters())
    assert all(v.untyped_storage().nbytes() == v.numel() * v.element_size() for v in state["model"].values())
    again = [_trainer(c, p) for c, p in zip(cfgs, paths)]
    train_packed(again, kernels="stacked")
    for a, r in zip(alone, again):
        assert torch.allclose(torch.tensor(_losses(r)), torch.tensor(_losses(a)), rtol=1e-5, atol=0)


def test_stacked_refusals():
    mixed = [_trainer(_configs(FAMILIES["snip"], seeds=(0,))[0]),
             _trainer(_configs(FAMILIES["snip"], base={**BASE, "model": {"name": "mlp", "kwargs": {"hidden": [8]}}},
                               seeds=(1,))[0])]
    with pytest.raises(PackError, match="different architectures"):
        PackedTrainer(mixed, kernels="stacked")
    assert PackedTrainer(mixed, kernels="auto").kernels == "loop"  # on the CPU, and for mixed members
    with pytest.raises(PackError, match="kernels="):
        PackedTrainer(mixed, kernels="grouped")
