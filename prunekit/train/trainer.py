"""The training loop: plain PyTorch with named hook points, exact resume, no host sync per step.

``Trainer.fit`` runs one phase (train, fine-tune, retrain ...). Time is counted in optimizer steps; the
phase is cut into *segments* (an epoch, or ``eval_every`` steps) that end with an evaluation, a metrics
line and an atomic checkpoint. A killed run resumes at its last segment boundary and, on CPU, finishes
bit-identically to an uninterrupted one: loaders derive their shuffling/augmentation from (seed, epoch)
or (seed, step), and RNG states travel in the checkpoint.

A non-finite training loss, weight or test loss stops the phase at the end of its segment with a
:class:`~prunekit.errors.NumericError` naming the step, before the segment's checkpoint is written, so
the last good checkpoint stays on disk.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, NumericError, first_line
from ..distributed import TrainerSync, is_main, wrap_model
from ..modelio import logits_of
from ..utils.io import atomic_write_text, remove_stale_temps
from .checkpoint import load_checkpoint, load_module_state, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .cuda_graph import GraphStep
from .evaluate import evaluate
from .optim import build_optimizer, build_scheduler, lr_change_period, lr_factor_fn, set_lr_, sync_scheduler_


def uses_channels_last(cfg: TrainConfig, model: nn.Module) -> bool:
    """``cfg.channels_last``, or when unset (the default) whether ``model`` has a 2-D convolution: NHWC
    convolutions train 15-30 % faster than NCHW on this project's CPUs (ResNet-20, VGG-16, Conv-6,
    LeNet-5; ``benchmarks/bench_trainer.py``) and on GPUs with tensor cores."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class Trainer:
    """Runs one training phase of ``model`` with an optional pruner's hooks.

    ``checkpoint_path`` / ``metrics_path``: where segment checkpoints and metric lines go (None: kept in
    memory only). ``progress(step, total)`` is called every few steps for progress bars.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader,
        test_loader,
        cfg: TrainConfig,
        pruner=None,
        device: torch.device | str = "cpu",
        phase: str = "train",
        checkpoint_path: str | os.PathLike | None = None,
        metrics_path: str | os.PathLike | None = None,
        progress: Callable[[int, int], None] | None = None,
        log: Callable[[dict], None] | None = None,
    ):
        self.model = model
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.cfg = cfg
        self.pruner = pruner
        self.device = torch.device(device)
        self.phase = phase
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.progress = progress
        self.log = log
        self.steps_per_epoch = len(train_loader)
        n, unit = cfg.length
        self.total_steps = n * self.steps_per_epoch if unit == "ep" else n
        self.optimizer = build_optimizer(cfg, model.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch, self.total_steps)
        self.lr_factor = lr_factor_fn(cfg, self.steps_per_epoch, self.total_steps)
        self.lr_period = lr_change_period(cfg, self.steps_per_epoch)
        if pruner is not None:
            pruner.attach(self.optimizer)
        self.channels_last = uses_channels_last(cfg, model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        ddp = wrap_model(model, self.device)  # the model itself unless distributed
        self.forward = torch.compile(ddp) if cfg.compile else ddp
        self.sync = TrainerSync.create(self)  # None unless distributed
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" and self.device.type == "cuda" else None
        self.graph_step = GraphStep(self) if cfg.cuda_graph else None  # ConfigError where it cannot capture
        self.step = 0
        self._prepared = False
        self.history: list[dict[str, Any]] = []
        self.wall_time = 0.0

    # --- segments ------------------------------------------------------------------------------
    def boundaries(self) -> list[int]:
        """Optimizer-step counts at which a segment ends (evaluate, log, checkpoint)."""
        every = self.cfg.eval_every
        if every is None:
            n, unit = self.cfg.length
            every = self.steps_per_epoch if unit == "ep" else max(1, math.ceil(self.total_steps / 10))
        return sorted(set(list(range(every, self.total_steps, every)) + [self.total_steps]))

    def _autocast(self):
        if self.cfg.amp == "off":
            return None
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return lambda: torch.autocast(self.device.type, dtype=dtype)

    def _batches(self, start: int, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.cfg.random_batches:
            yield from self.train_loader.random_batches(count, start_step=start)
            return
        spe = self.steps_per_epoch
        produced = 0
        epoch, skip = divmod(start, spe)
        while produced < count:
            if hasattr(self.train_loader, "set_epoch"):
                self.train_loader.set_epoch(epoch)
            for i, batch in enumerate(self.train_loader):
                if i < skip:
                    continue
                yield batch
                produced += 1
                if produced == count:
                    return
            epoch, skip = epoch + 1, 0

    # --- the loop ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Resume from ``checkpoint_path`` if it exists (once; :meth:`fit` calls it)."""
        if self._prepared:
            return
        self._prepared = True
        if self.checkpoint_path is not None:
            remove_stale_temps(self.checkpoint_path)  # left by a write that was killed before its rename
            if self.checkpoint_path.exists():
                self._resume(load_checkpoint(self.checkpoint_path, map_location=self.device), str(self.checkpoint_path))

    def fit(self) -> dict[str, Any]:
        """Train to the end of the phase (resuming from ``checkpoint_path`` if it exists)."""
        self.prepare()
        self.model.train()
        autocast = self._autocast()
        channels_last = self.channels_last
        pruner = self.pruner
        custom_step = getattr(pruner, "train_step", None)
        graph_step = self.graph_step
        sync = self.sync
        if sync is not None:
            sync.start()
        spe, lr_period, progress = self.steps_per_epoch, self.lr_period, self.progress
        for end in self.boundaries():
            if end <= self.step:
                continue
            t0 = time.perf_counter()
            start = self.step
            losses: list[torch.Tensor] = []  # stacked and checked once per segment: no host sync per step
            for x, y in self._batches(start, end - start):
                self.step += 1
                step = self.step
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                if custom_step is not None:
                    loss = custom_step(x, y, self.optimizer, step)
                elif graph_step is not None:
                    loss = graph_step.step(x, y, step, autocast)
                else:
                    loss = self._train_step(x, y, step, autocast)
                if lr_period and step % lr_period == 0:  # LambdaLR.step()'s values, only where they change
                    set_lr_(self.optimizer, self.scheduler, self.lr_factor(step))
                if sync is not None:
                    sync.after_step(step)
                losses.append(loss.detach())
                if pruner is not None and step % spe == 0:
                    pruner.on_epoch_end(step // spe - 1)
                if progress is not None and (step % 10 == 0 or step == end):
                    progress(step, self.total_steps)
            self.wall_time += time.perf_counter() - t0
            sync_scheduler_(self.scheduler, self.optimizer, self.step)
            self._end_segment(start, torch.stack(losses) if losses else torch.empty(0, device=self.device),
                              autocast)
        if pruner is not None:
            pruner.on_train_end()
        return self.summary()

    def loss(self, x: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
        """The training loss of one batch (forward under ``autocast`` when given)."""
        if autocast is not None:
            with autocast():
                out = logits_of(self.forward(x))
        else:
            out = logits_of(self.forward(x))
        return F.cross_entropy(out.float(), y, label_smoothing=self.cfg.label_smoothing)

    def _train_step(self, x, y, step: int, autocast) -> torch.Tensor:
        pruner = self.pruner
        if pruner is not None:
            pruner.before_step(step)
        loss = self.loss(x, y, autocast)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if pruner is not None:
            pruner.after_backward(step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if pruner is not None:
            pruner.after_optimizer_step(step)
        return loss

    def _kept(self, start: int) -> str:
        if self.checkpoint_path is None:
            return "no checkpoint is written"
        if start == 0:
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {start}) is kept in {self.checkpoint_path}"

    def _check_finite(self, start: int, losses: torch.Tensor) -> None:
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = start + 1 + int((~finite).nonzero()[0, 0])
            raise NumericError(f"{self.phase}: non-finite training loss at step {bad}; {self._kept(start)}")
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()])
        if not bool(finite.all()):  # one host sync per segment
            name = [n for n, _ in self.model.named_parameters()][int((~finite).nonzero()[0, 0])]
            raise NumericError(f"{self.phase}: non-finite values in weight {name!r} at step {self.step} "
                               f"(segment from step {start + 1}); {self._kept(start)}")

    def _end_segment(self, start: int, losses: torch.Tensor, autocast) -> None:
        if self.sync is not None:
            losses = self.sync.mean_losses(losses)
        self._check_finite(start, losses)
        ev = evaluate(self.model, self.test_loader, self.channels_last, autocast)
        if not math.isfinite(ev["loss"]):
            raise NumericError(f"{self.phase}: non-finite test loss after step {self.step}; {self._kept(start)}")
        record = {
            "phase": self.phase,
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": float(losses.sum()) / max(1, self.step - start),
            "test_acc": ev["acc"],
            "test_loss": ev["loss"],
        }
        if self.pruner is not None and self.pruner.prunes:
            record["sparsity"] = self.pruner.masks.sparsity()
        self.history.append(record)
        if self.sync is not None:
            self.sync.end_segment()
        if self.checkpoint_path is not None and is_main():
            save_checkpoint(self.checkpoint_path, self.state_dict())
        if self.metrics_path is not None and is_main():
            self._write_metrics()
        if self.log is not None:
            self.log(record)

    def _write_metrics(self) -> None:
        # rewritten whole (atomically) so a resumed run never duplicates or loses lines
        lines = [json.dumps(r) for r in self.history]
        atomic_write_text(self.metrics_path, "\n".join(lines) + "\n")

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "step": self.step,
            "wall_time": self.wall_time,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "rng": rng_state(),
        }

    def _resume(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"{source}: holds {type(state).__name__}; expected a training checkpoint")
        load_module_state(self.model, state.get("model"), source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.pruner is not None and state.get("pruner") is not None:
                self.pruner.load_state_dict(state["pruner"])
            set_rng_state(state["rng"])
            self.step = int(state["step"])
            self.wall_time = float(state.get("wall_time", 0.0))
            self.history = list(state["history"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{source}: does not fit this run ({type(e).__name__}: {first_line(e)}); delete it to "
                                  f"restart the phase") from None
        if self.metrics_path is not None and is_main():
            self._write_metrics()

    def summary(self) -> dict[str, Any]:
        accs = [r["test_acc"] for r in self.history]
        return {
            "final_acc": accs[-1] if accs else float("nan"),
            "best_acc": max(accs) if accs else float("nan"),
            "steps": self.step,
            "wall_time": self.wall_time,
        }


