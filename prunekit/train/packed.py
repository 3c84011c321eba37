"""Packed training: several runs of one grid trained side by side in one loop.

:class:`PackedTrainer` drives K :class:`~prunekit.train.Trainer` objects — one per run, each with its own
model, method (masks, hooks, state), data order, metrics, checkpoints and run directory — through one
shared loop: one batch gather for all members (when their loaders differ only in seed), one autograd
call over the members' losses, one multi-tensor optimizer step over all members' parameters (the
optimizer's per-parameter state is the members' own state), one LR schedule. Every member's own hooks
run at the same points of a step as in :meth:`Trainer.fit`, its masks are enforced and it is evaluated
and checkpointed on its own, with the checkpoint format of an unpacked run, so downstream (report,
resume, export) cannot tell the difference; a resumed packed run may continue unpacked and vice versa.

Each member computes its forward/backward on its own model, so a member's losses, gradients and weights
are bit-for-bit those of the same run trained alone (``tests/test_pack.py``): the sum of the losses
backpropagates a gradient of exactly 1 into each, elementwise optimizer updates do not depend on which
other tensors share the call, and the gathered rows are the rows each loader would have produced. What
packing saves is the per-step fixed work of K separate loops (loop and hook dispatch, optimizer and
scheduler calls, batch gathers); it does not batch the members' arithmetic into shared kernels (on the
CPU the grouped kernels of ``torch.func.vmap`` measured slower than separate ones: ``docs/performance.md``).

A member that fails (a non-finite loss or weight at a segment end, an error in one of its hooks) stops
alone: its outcome is the exception, the others go on.

Refused (:class:`~prunekit.errors.PackError`, one line): methods with their own training step (BiP),
distributed runs, fp16 loss scaling (one scaler would skip every member's step when one overflows),
members whose schedules differ (training config, steps per epoch, length, position after a resume).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ..data.loader import TensorLoader
from ..errors import PackError
from ..methods.base import Pruner
from .optim import build_optimizer, build_scheduler, set_lr_, sync_scheduler_
from .stacked import StackedPack, stacked_refusal
from .trainer import Trainer


KERNELS = ("auto", "loop", "stacked")


def pack_key(trainer: Trainer) -> tuple:
    """Trainers with equal keys can train in one pack (call after :meth:`Trainer.prepare`)."""
    return (trainer.cfg.model_dump_json(), trainer.steps_per_epoch, trainer.total_steps, trainer.step,
            tuple(trainer.boundaries()), str(trainer.device))


def pack_refusal(trainer: Trainer) -> str | None:
    """Why ``trainer`` cannot be a member of a pack (None: it can)."""
    pruner = trainer.pruner
    if pruner is not None and getattr(pruner, "train_step", None) is not None:
        return f"method {pruner.name!r} trains with its own update step (train_step), not masked SGD"
    if trainer.sync is not None:
        return "distributed runs (torchrun) do not pack"
    if pruner is not None and getattr(pruner.config, "retrain_steps", None):
        return (f"method {pruner.name!r} with retrain_steps starts a fresh optimizer at every pruning round, "
                "which a shared optimizer cannot do for one member")
    if trainer.scaler is not None:
        return "train.amp='fp16' on CUDA: one loss scaler would skip every member's step when one overflows"
    return None


def _overrides(pruner: Pruner | None, hook: str) -> bool:
    return pruner is not None and getattr(type(pruner), hook) is not getattr(Pruner, hook)


class _Member:
    """One run of the pack and its per-step view of the shared loop."""

    def __init__(self, index: int, trainer: Trainer):
        self.index, self.trainer = index, trainer
        self.pruner = trainer.pruner
        self.params = list(trainer.model.parameters())
        self.before_step = self.pruner.before_step if _overrides(self.pruner, "before_step") else None
        self.after_backward = self.pruner.after_backward if _overrides(self.pruner, "after_backward") else None
        self.after_optimizer_step = self.pruner.after_optimizer_step if self.pruner is not None else None
        self.error: BaseException | None = None
        self.step_losses: list[torch.Tensor] = []


class PackedTrainer:
    """Train ``trainers`` (built as for unpacked runs, same :class:`TrainConfig` and schedule) as one pack.

    ``kernels``: ``loop`` (each member's forward/backward on its own model: bit-identical to separate
    runs), ``stacked`` (one model with stacked parameters, one vmapped kernel per layer:
    :mod:`prunekit.train.stacked`), ``auto`` (stacked on CUDA where the members allow it, else loop).
    :meth:`fit` returns one outcome per trainer, in order: its :meth:`Trainer.summary`, or the exception
    that stopped it. Raises :class:`PackError` before any step when the trainers cannot pack.
    """

    def __init__(self, trainers: Sequence[Trainer], kernels: str = "auto"):
        if kernels not in KERNELS:
            raise PackError(f"kernels={kernels!r}; allowed: {', '.join(KERNELS)}")
        if not trainers:
            raise PackError("a pack needs at least one run")
        self.trainers = list(trainers)
        for t in self.trainers:
            t.prepare()  # resume each member from its own checkpoint
            why = pack_refusal(t)
            if why is not None:
                raise PackError(f"--pack: {t.phase} of {type(t.model).__name__}: {why}; run it unpacked")
        keys = {pack_key(t) for t in self.trainers}
        if len(keys) > 1:
            raise PackError("--pack: members differ in training config, steps per epoch, length or resume "
                            "step; allowed: runs of one schedule at the same step")
        lead = self.trainers[0]
        self.cfg, self.device, self.phase = lead.cfg, lead.device, lead.phase
        self.steps_per_epoch, self.total_steps = lead.steps_per_epoch, lead.total_steps
        self.members = [_Member(i, t) for i, t in enumerate(self.trainers)]
        params = [p for m in self.members for p in m.params]
        if len({id(p) for p in params}) != len(params):
            raise PackError("--pack: two members share parameters; allowed: one model per run")
        if kernels == "auto":  # batched kernels pay where one small model leaves the device idle
            kernels = "stacked" if self.device.type == "cuda" and stacked_refusal(self.trainers) is None else "loop"
        self.kernels = kernels
        self.stacked = StackedPack(self.trainers) if kernels == "stacked" else None
        if self.stacked is not None:
            self.optimizer = build_optimizer(self.cfg, self.stacked.params.values())
            self.stacked.load_state(self.optimizer, [t.optimizer for t in self.trainers])
        else:
            self.optimizer = build_optimizer(self.cfg, params)
            for t in self.trainers:  # the members' own (possibly resumed) state, by reference
                for p in t.model.parameters():
                    if p in t.optimizer.state:
                        self.optimizer.state[p] = t.optimizer.state[p]
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.steps_per_epoch, self.total_steps)
        self.scheduler.load_state_dict(lead.scheduler.state_dict())
        self._set_lr(lead.optimizer.param_groups[0]["lr"])
        self.shared_batches = _shared_plan(self.trainers)
        self._linked = self.stacked is None
        if self.stacked is not None and any(self.optimizer.state.values()):
            for m in self.members:  # resumed: the stacked state is the members' own, as views
                self.stacked.link_state(self.optimizer, m.trainer.optimizer, m.index)
            self._linked = True

    def _set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # --- data ----------------------------------------------------------------------------------
    def _batches(self, start: int, count: int):
        """Per step, ``[(x, y), ...]``: each member's own batch of that step (stacked kernels: those
        batches concatenated in member order, one ``(x, y)``)."""
        if self.shared_batches is not None:
            yield from self._gathered(start, count)
            return
        streams = [t._batches(start, count) for t in self.trainers]
        for per_member in zip(*streams):
            if self.stacked is None:
                yield list(per_member)
            else:  # stacked kernels take all members' rows as one batch, member after member
                yield torch.cat([b[0] for b in per_member]), torch.cat([b[1] for b in per_member])

    def _gathered(self, start: int, count: int):
        # the members' loaders differ only in seed: one gather of all members' rows per step, then views
        loaders = self.shared_batches
        lead, spe, k = loaders[0], self.steps_per_epoch, len(loaders)
        epoch, skip = divmod(start, spe)
        produced = 0
        n, bs = lead.num_samples, lead.batch_size
        while produced < count:
            plans = [ld.epoch_plan(epoch) for ld in loaders]
            order = lead._to_device(torch.stack([p[0] for p in plans]))
            params = {key: lead._to_device(torch.stack([p[1][key] for p in plans])) for key in plans[0][1]}
            for b in range(skip, spe):
                sl = slice(b * bs, min((b + 1) * bs, n))
                x, y = lead._batch(order[:, sl].reshape(-1),
                                   {key: v[:, sl].reshape(-1, *v.shape[2:]) for key, v in params.items()})
                rows = sl.stop - sl.start
                if self.stacked is not None:
                    yield x, y  # already in member order: [K * rows, ...]
                else:
                    yield [(x[i * rows:(i + 1) * rows], y[i * rows:(i + 1) * rows]) for i in range(k)]
                produced += 1
                if produced == count:
                    return
            epoch, skip = epoch + 1, 0

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> list[Any]:
        """Train every member to the end of the phase; one outcome per member (summary or exception)."""
        lead = self.trainers[0]
        for t in self.trainers:
            t.model.train()
            if t.pruner is not None and self.stacked is None:
                t.pruner.attach(self.optimizer)  # policies on optimizer state see the member's own buffers
        autocast = lead._autocast()
        try:
            for end in lead.boundaries():
                if end <= lead.step:
                    continue
                self._segment(lead.step, end, autocast)
                if not self._active():
                    break
        finally:
            for t in self.trainers:
                if t.pruner is not None:
                    t.pruner.attach(t.optimizer)
        outcomes = []
        for m in self.members:
            if m.error is None:
                try:
                    if m.pruner is not None:
                        m.pruner.on_train_end()
                except Exception as e:  # noqa: BLE001 - one member's failure must not stop the others
                    m.error = e
            outcomes.append(m.error if m.error is not None else m.trainer.summary())
        return outcomes

    def _active(self) -> list[_Member]:
        return [m for m in self.members if m.error is None]

    def _segment(self, start: int, end: int, autocast) -> None:
        active = self._active()
        for m in active:
            m.step_losses = []
        spe, lead = self.steps_per_epoch, self.trainers[0]
        t0 = time.perf_counter()
        step = start
        for batches in self._batches(start, end - start):
            step += 1
            for m in active:
                if m.before_step is not None:
                    self._guard(m, m.before_step, step)
            self.optimizer.zero_grad(set_to_none=True)
            if self.stacked is None:
                self._loop_step(active, batches, step, autocast)
            else:
                self._stacked_step(active, batches, step, autocast)
            for m in active:
                if m.after_optimizer_step is not None:
                    self._guard(m, m.after_optimizer_step, step)
            if lead.lr_period and step % lead.lr_period == 0:
                set_lr_(self.optimizer, self.scheduler, lead.lr_factor(step))
            if step % spe == 0:
                for m in active:
                    if m.pruner is not None:
                        self._guard(m, m.pruner.on_epoch_end, step // spe - 1)
            if step % 10 == 0 or step == end:
                for m in active:
                    if m.trainer.progress is not None:
                        m.trainer.progress(step, self.total_steps)
            if any(m.error is not None for m in active):
                self._drop_failed(active)
                active = self._active()
                if not active:
                    return
        share = (time.perf_counter() - t0) / max(1, len(active))  # each member's share of the pack's time
        sync_scheduler_(self.scheduler, self.optimizer, step)
        lr = self.optimizer.param_groups[0]["lr"]
        sched_state = self.scheduler.state_dict()
        for m in active:
            t = m.trainer
            t.step = step
            t.wall_time += share
            for g in t.optimizer.param_groups:
                g["lr"] = lr
            if self.stacked is None:
                for p in m.params:
                    if p in self.optimizer.state:
                        t.optimizer.state[p] = self.optimizer.state[p]
            t.scheduler.load_state_dict(sched_state)
            try:
                # finite checks, evaluation, checkpoint, metrics
                t._end_segment(start, torch.stack(m.step_losses), autocast)
            except Exception as e:  # noqa: BLE001 - the member stops alone
                m.error = e
        self._drop_failed(active)

    def _loop_step(self, active: list[_Member], batches, step: int, autocast) -> None:
        losses = []
        for m in active:
            x, y = batches[m.index]
            if m.trainer.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            losses.append(m.trainer.loss(x, y, autocast))
        torch.autograd.backward(losses)  # d(sum)/d(loss_k) = 1: each member's own gradient, exactly
        for m in active:
            if m.after_backward is not None:
                self._guard(m, m.after_backward, step)
        self.optimizer.step()
        for m, loss in zip(active, losses):
            m.step_losses.append(loss.detach())

    def _stacked_step(self, active: list[_Member], batches, step: int, autocast) -> None:
        pack = self.stacked
        x, y = batches  # [K * B, ...] in member order -> [K, B, ...]
        x, y = x.view(pack.k, -1, *x.shape[1:]), y.view(pack.k, -1)
        losses = pack.losses(x, y, self.cfg.label_smoothing, autocast)
        losses.sum().backward()
        skipped = []
        for m in active:  # the hooks that read gradients see the member's own (views), where they may run
            if m.after_backward is not None or (m.pruner is not None and m.pruner.mask_changed_at(step)):
                pack.link_grads(m.index)
                if m.after_backward is not None:
                    self._guard(m, m.after_backward, step)
                gone = pack.skipped(m.index)
                if gone:  # RigL's skip_optimizer_step: that member's slice keeps its weights and state
                    skipped.append((m.index, gone, pack.snapshot(self.optimizer, m.index, gone)))
        self.optimizer.step()
        for k, gone, saved in skipped:
            pack.restore(self.optimizer, k, gone, saved)
        if not self._linked:
            for m in self.members:
                pack.link_state(self.optimizer, m.trainer.optimizer, m.index)
            self._linked = True
        detached = losses.detach()
        for m in active:
            m.step_losses.append(detached[m.index])

    def _guard(self, member: _Member, hook, arg: int) -> None:
        if member.error is not None:
            return
        try:
            hook(arg)
        except Exception as e:  # noqa: BLE001 - the member stops alone (a PrunekitError or a bug)
            member.error = e

    def _drop_failed(self, members: list[_Member]) -> None:
        for m in members:
            if m.error is None:
                continue
            if self.stacked is not None:
                self.stacked.zero_member(self.optimizer, m.index)
                continue
            for p in m.params:  # out of the shared step from now on
                p.grad = None
                self.optimizer.state.pop(p, None)


def _shared_plan(trainers: Sequence[Trainer]) -> list[TensorLoader] | None:
    """The members' train loaders when one gather can serve them all: device-resident loaders over the
    same samples, batch size, augmentation and normalisation, differing only in their seed."""
    loaders = [t.train_loader for t in trainers]
    if any(t.cfg.random_batches for t in trainers) or not all(type(ld) is TensorLoader for ld in loaders):
        return None
    lead = loaders[0]

    def same(ld: TensorLoader) -> bool:
        return ((ld.batch_size, ld.shuffle, ld.drop_last, ld.stream, ld.rank, ld.world_size, ld.device, ld.augment,
                 ld.normalization) == (lead.batch_size, lead.shuffle, lead.drop_last, lead.stream, lead.rank,
                                       lead.world_size, lead.device, lead.augment, lead.normalization)
                and (ld.data is lead.data or (torch.equal(ld.data.images, lead.data.images)
                                              and torch.equal(ld.data.labels, lead.data.labels))))

    if lead.world_size != 1 or not all(same(ld) for ld in loaders[1:]):
        return None
    return loaders


def train_packed(trainers: Sequence[Trainer], kernels: str = "auto") -> list[Any]:
    """Python API: train ``trainers`` as one pack (:class:`PackedTrainer`); members that cannot pack raise
    :class:`PackError` before any step. Returns one outcome per trainer (its summary or its exception)."""
    return PackedTrainer(trainers, kernels).fit()


__all__ = ["PackError", "PackedTrainer", "pack_key", "pack_refusal", "train_packed"]
