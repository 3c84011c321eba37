"""``train.cuda_graph: true``: the whole training step captured once as a CUDA graph and replayed.

One replay runs forward, loss, backward, the optimizer update and the mask enforcement (one
``_foreach_mul_`` with the masks' cached float factors) as a single launch, so a small model's step is
no longer bound by the host's kernel launches (PyTorch, "CUDA Graphs", whole-network capture). Shapes
must be static: every batch has ``batch_size`` samples. The LR is a constant inside a graph, so the
graph is captured again whenever the schedule changes the LR (once per epoch for the per-epoch
schedules). The first steps run eagerly on a side stream (cuBLAS workspaces, optimizer state), as
capture requires.

Refused in one line (:func:`cuda_graph_refusal`): no CUDA device, methods whose per-step hooks change
masks or state on the host (DST, GraNet, LAP rounds, BiP's own step), fp16 loss scaling (its overflow
check runs on the host), ``train.compile`` (its ``reduce-overhead`` mode is the compiled equivalent),
distributed runs, and loaders whose last batch is partial.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError
from ..methods.base import Pruner

WARMUP_STEPS = 3
_HOOKS = ("before_step", "after_backward", "after_optimizer_step", "enforce", "on_epoch_end")


def device_refusal(device: torch.device) -> str | None:
    """Why ``train.cuda_graph`` cannot run on ``device`` (None: it can); checked before a run starts."""
    if device.type != "cuda":
        return (f"train.cuda_graph=true needs a CUDA device; this run trains on {device.type}; allowed: false, or "
                f"device: auto/cuda on a machine with CUDA")
    return None


def cuda_graph_refusal(trainer) -> str | None:
    """Why ``trainer``'s step cannot be captured (None: it can)."""
    why = device_refusal(trainer.device)
    if why is not None:
        return why
    pruner, cfg = trainer.pruner, trainer.cfg
    if pruner is not None and any(getattr(type(pruner), h) is not getattr(Pruner, h) for h in _HOOKS):
        return (f"train.cuda_graph=true: method {pruner.name!r} changes masks or state in its per-step hooks, "
                f"which a replayed graph would not run; allowed: dense, pruning-at-init and after-training methods")
    if pruner is not None and getattr(pruner, "train_step", None) is not None:
        return f"train.cuda_graph=true: method {pruner.name!r} trains with its own step"
    if cfg.amp == "fp16":
        return "train.cuda_graph=true with amp='fp16': the loss scaler checks for overflow on the host every step"
    if cfg.compile:
        return "train.cuda_graph=true with train.compile=true: allowed: one of the two"
    if trainer.sync is not None:
        return "train.cuda_graph=true: distributed runs are not captured"
    loader = trainer.train_loader
    n, bs = getattr(loader, "num_samples", None), getattr(loader, "batch_size", None)
    if not cfg.random_batches and (n is None or bs is None or (n % bs and not getattr(loader, "drop_last", False))):
        return (f"train.cuda_graph=true needs batches of one shape; {n} samples in batches of {bs} leave a partial "
                f"last batch; allowed: data.drop_last=true")
    return None


class GraphStep:
    """The captured step of one :class:`~prunekit.train.Trainer` (built by the trainer when
    ``cfg.cuda_graph``); :meth:`step` has the signature and result of ``Trainer._train_step``."""

    def __init__(self, trainer):
        why = cuda_graph_refusal(trainer)
        if why is not None:
            raise ConfigError(why)
        self.trainer = trainer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.x = self.y = self.loss = None
        self.lr = None

    def _autocast(self) -> Callable | None:
        amp = self.trainer.cfg.amp
        if amp == "off":
            return None
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        # autocast's weight-cast cache must be off inside a graph (its cached casts would be freed)
        return lambda: torch.autocast("cuda", dtype=dtype, cache_enabled=False)

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, autocast) -> torch.Tensor:
        t = self.trainer
        if self.warm < WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = t._train_step(x, y, step, self._autocast())
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
            return loss
        lr = tuple(g["lr"] for g in t.optimizer.param_groups)
        if self.graph is None or lr != self.lr:  # the LR is baked into the graph's kernels
            self._capture(x, y)
            self.lr = lr
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss.detach().clone()  # the next replay overwrites the static loss

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        t = self.trainer
        self.graph = None
        torch.cuda.synchronize(t.device)
        self.x, self.y = x.clone(), y.clone()
        if t.pruner is not None:
            t.pruner.masks.apply_()  # builds the cached float factors outside the capture
        t.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes (not accumulates) the grads
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = t.loss(self.x, self.y, self._autocast())
            loss.backward()
            t.optimizer.step()
            if t.pruner is not None:
                t.pruner.enforce()
        self.graph, self.loss = graph, loss
