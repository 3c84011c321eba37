"""BiP: pruning as bi-level optimisation of the mask and the weights.

Zhang, Yao, Ram, Zhao, Chen, Hong, Wang & Liu, "Advancing Model Pruning via Bi-level Optimization",
NeurIPS 2022 (arXiv 2210.04092); reference ``OPTML-Group/BiP`` (``trainer/bilevel.py``, ``models/layers.py``,
``utils/model.py``, ``utils/schedules.py``, ``configs/``). Notes: ``../shared/reference/methods.md`` §3, §7.

``min_m ℓ(m ⊙ θ*(m))`` s.t. ``θ*(m) = argmin_θ ℓ(m ⊙ θ) + γ/2‖θ‖²``, ``m`` = top-k of |scores| with a
straight-through gradient. One iteration (``train_step``) takes two mini-batches — B₁ from the trainer,
B₂ from the split's second stream (``data.split: bip``) — and runs

1. **θ-step**: one SGD step of the phase optimizer on the weights with the mask fixed, on B₂;
2. **m-step**: one SGD step of the mask optimizer on the scores (and BN affine parameters) on B₁, with
   the implicit-gradient term: ``implicit="code"`` (default, what the published numbers ran):
   ``g − lr2·g²`` with ``g`` the score (and BN) gradient, because the reference multiplies two gradients
   that are both the score gradient (OPTML-Group/BiP#3); ``implicit="paper"``: ``∂ℓ/∂m − (1/γ)·∇zℓ ⊙ ∇θℓ``
   with ``∇θℓ = m ⊙ ∇zℓ`` (Algorithm A1), through the straight-through estimator to the scores.
   ``accelerate=True``: the first-order alternation (m-step without implicit term on B₁, then θ-step on B₂).

The final mask is the top-k of the final scores (global for unstructured runs); the phase already
trains the weights, so fine-tuning is optional: the last ``finetune_epochs`` epochs of the phase keep the
mask fixed (0 = the reference).

Reference behaviour and where this implementation departs from it:

* ``score_init="shared"`` (default): the scores *are* the weights, as ``--scaled-score-init`` makes them
  (``popup_scores.data = weight.data``) in every config. ``weights`` (an independent copy, the paper's
  formulation) and ``scaled`` (HYDRA's scaling) are options.
* ``legacy_zero_grad=True`` (default): torch<2.0 ``zero_grad`` left zero tensors in "frozen" parameters,
  so each optimizer also applied momentum and weight decay to the other level's variables (the θ
  optimizer to the scores once they have had a gradient, the mask optimizer to the weights, biases and
  untargeted layers). ``False``: frozen means frozen.
* The mask is computed once per pass with an O(n) selection on one flat tensor and reused for the
  forward and the backward pass; the reference re-sorts all scores in every forward. The reference's
  two identical m-step passes on B₁ (one to read ∇θ, one with the weights frozen) give the same ∇z, so
  one backward serves both. Exact, except: BN running statistics move twice per iteration here, four
  times in the reference (``bn_passes=4`` adds its two extra forward passes, without gradients).
* The mask learning rate: ``train.py`` wires ``--mask-lr-schedule step`` to ``step_schedule`` with base
  ``--lr`` (×0.1 at 50 %, ×0.01 at 75 % of the epochs): ``mask_schedule="step"`` (default; set
  ``mask_lr`` to the θ lr to match). ``step_mask`` is ``step_mask_schedule`` (75 %/90 %), never called.
* The θ-step's legacy momentum/decay of the scores uses the pre-step weights (torch ≥ 2 foreach SGD);
  torch 1.x's per-parameter loop used the post-step ones (an O(lr²) difference).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..distributed import average_gradients, broadcast_buffers
from ..sparsity import MaskSet
from .base import PruneContext, Pruner
from .hydra import ScoreBank, ScoreConfig, epoch_factor, sgd_momentum_, split_params
from .registry import METHODS


class BipConfig(ScoreConfig):
    score_init: Literal["shared", "weights", "scaled"] = Field(
        "shared", description="the scores are the weights (the reference's --scaled-score-init), an independent "
        "copy of them (the paper), or HYDRA's scaled copy")
    implicit: Literal["code", "paper", "none"] = Field(
        "code", description="the m-step's implicit-gradient term: g - lr2 g^2 (the reference's code), the paper's "
        "dl/dm - (1/gamma) grad_z l * grad_theta l, or none")
    lr2: float = Field(1e-4, ge=0.0, description="coefficient of implicit='code' (configs/*/bip.yml; argparse "
                       "default 0.1)")
    gamma: float = Field(1.0, gt=0.0, description="implicit='paper': the term's coefficient is 1/gamma")
    mask_lr: float = Field(0.1, ge=0.0, description="SGD learning rate of the scores (the m-step)")
    mask_momentum: float = Field(0.9, ge=0.0, description="SGD momentum of the scores")
    mask_weight_decay: float = Field(1e-4, ge=0.0, description="SGD weight decay of the scores")
    mask_schedule: Literal["step", "step_mask", "cosine_bip", "cosine", "constant"] = Field(
        "step", description="schedule of mask_lr over the bi-level epochs (step: x0.1 at 50 %, x0.01 at 75 %, "
        "what the reference's train.py wires)")
    accelerate: bool = Field(False, description="first-order alternation: the m-step without the implicit term, "
                             "then the theta-step")
    legacy_zero_grad: bool = Field(True, description="as torch<2.0 zero_grad: each optimizer also applies momentum "
                                   "and weight decay to the other level's variables; False: frozen means frozen")
    bn_passes: Literal[2, 4] = Field(2, description="BatchNorm statistics updates per iteration (4: the "
                                     "reference's two extra forward passes)")
    finetune_epochs: int = Field(0, ge=0, description="last epochs of the phase with the mask fixed (0: the "
                                 "reference)")


class _Stream:
    """Batch ``i`` (0-based, counted across epochs) of a loader; continues one iterator while the
    requests are consecutive, so a run resumed at step ``s`` sees what an uninterrupted one saw."""

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.n = max(1, len(loader))  # type: ignore[arg-type]
        self._it = None
        self._next = -1

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(index, self.n)
        if self._it is None or index != self._next or i == 0:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            self._it = iter(self.loader)
            for _ in range(i):
                next(self._it)
        self._next = index + 1
        return next(self._it)


@METHODS.register("bip", family="post-training")
class BiP(Pruner):
    """BiP (see the module docstring). ``prune(ctx)`` initialises the scores from the pretrained weights
    and sets the starting mask (the OMP mask); the runner's following phase calls :meth:`train_step`,
    one BiP iteration per optimizer step, with the phase's optimizer and LR schedule as the θ optimizer
    (the configs: SGD lr 0.1, ``cosine_bip``, momentum 0.9, weight decay 1e-4, 100 epochs)."""

    Config = BipConfig
    name = "bip"
    config: BipConfig

    def __init__(self, model: nn.Module, config: BipConfig):
        super().__init__(model, config)
        self.bank = ScoreBank(self, config.structure, config.allocation, self.target_sparsity(),
                              shared=config.score_init == "shared")
        self.norm_params, other = split_params(model, self.bank.params)
        self.other_params = [p for p in other if p.requires_grad]
        self.bufs: dict[str, list[Tensor]] = {}
        self.seen = {"score_grad": False, "weight_grad": False}
        self.steps_per_epoch = 1
        self.epochs = 1
        self._second: _Stream | None = None

    schedule = "after"
    own_loop_refusal = ("pruner.step() after optimizer.step() would only fine-tune the starting mask (that is "
                        "OMP, not BiP); call pruner.train_step(x, y, optimizer, step) for each batch instead, "
                        "after pruner.setup(ctx) and pruner.prune()")

    def setup(self, ctx: PruneContext) -> None:
        self._io = self.io_for(ctx)
        spe = ctx.steps_per_epoch or (len(ctx.batches) if hasattr(ctx.batches, "__len__") else 1)
        self.steps_per_epoch = max(1, spe)
        self.epochs = max(1, math.ceil(ctx.total_steps / self.steps_per_epoch))
        self._second = _Stream(ctx.second_batches) if ctx.second_batches is not None else None

    def prune(self, ctx: PruneContext | None = None) -> MaskSet:
        if ctx is not None:
            self.setup(ctx)
        self.bank.init_from_model(self.config.score_init)
        self.bank.select()
        self.bank.write_z()
        self.bufs = {}
        self.seen = {"score_grad": False, "weight_grad": False}
        return self.masks

    def on_epoch_end(self, epoch: int) -> None:
        self.bank.check_finite(f"{self.name}: epoch {epoch}")

    def mask_changed_at(self, step: int) -> bool:
        return (step - 1) // self.steps_per_epoch < self.epochs - self.config.finetune_epochs

    # --- one iteration -------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer, step: int) -> Tensor:
        cfg = self.config
        epoch = (step - 1) // self.steps_per_epoch
        bilevel_epochs = self.epochs - cfg.finetune_epochs
        broadcast_buffers(self.model)  # a distributed run: rank 0's BN statistics, as DDP does
        if epoch >= bilevel_epochs:
            return self.finetune_step(x, y, optimizer)
        # without a second stream (split other than bip) both levels see the same mini-batch
        x2, y2 = self._second.batch(step - 1) if self._second is not None else (x, y)
        mask_lr = cfg.mask_lr * epoch_factor(cfg.mask_schedule, epoch, bilevel_epochs)
        if cfg.accelerate:
            loss = self.m_step(x, y, mask_lr, implicit=False)
            self.theta_step(x2, y2, optimizer)
            return loss
        self.theta_step(x2, y2, optimizer)
        return self.m_step(x, y, mask_lr)

    def _momentum(self, key: str, params: list[Tensor], grads: list[Tensor | None], momentum: float,
                  weight_decay: float) -> list[Tensor]:
        bufs = self.bufs.setdefault(key, [])
        return sgd_momentum_(params, grads, bufs, not bufs, momentum, weight_decay)

    def _loss_backward(self, x: Tensor, y: Tensor, zero_grad) -> Tensor:
        """Cross-entropy on ``(x, y)`` and fresh gradients (``zero_grad`` of the optimizer or the model),
        averaged over the processes of a distributed run (BiP calls the model outside DDP's backward)."""
        loss = getattr(self, "_io", self.io).loss(self.model, x, y)
        zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.model.parameters())
        return loss

    def theta_step(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer) -> Tensor:
        """Lower level: one step of ``optimizer`` on dense θ with gradient ``m ⊙ ∇zℓ(B₂)``."""
        cfg, bank = self.config, self.bank
        loss = self._loss_backward(x, y, optimizer.zero_grad)
        # the optimizer steps dense θ, so weight decay and momentum reach the pruned values as well
        bank.load_theta()
        bank.mask_grads()
        group = optimizer.param_groups[0]
        legacy = cfg.legacy_zero_grad and self.seen["score_grad"]
        if legacy:  # buffers from the pre-step scores (= pre-step θ when shared)
            (buf,) = self._momentum("theta_opt_scores", [bank.scores], [None], group.get("momentum", 0.0),
                                    group.get("weight_decay", 0.0))
        optimizer.step()
        bank.read_theta()
        self.seen["weight_grad"] = True
        if legacy:
            with torch.no_grad():
                bank.scores.add_(buf, alpha=-group["lr"])
        if legacy or bank.shared:
            bank.select()
        bank.write_z()
        return loss.detach()

    def m_step(self, x: Tensor, y: Tensor, lr: float, implicit: bool = True) -> Tensor:
        """Upper level: one mask-optimizer step on the scores and BN affine parameters on B₁."""
        cfg, bank, model = self.config, self.bank, self.model
        loss = self._loss_backward(x, y, model.zero_grad)
        if cfg.bn_passes == 4:
            with torch.no_grad():
                model(x)  # the reference's second pass on B₁: same weights, same BN update
        gz = bank.grad_z()
        g_s = bank.score_grad(gz)
        norm_g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.norm_params]
        if implicit and cfg.implicit == "code":
            # −lr2 · mask_grad ⊙ param_grad: both factors are the score (BN) gradient in the reference
            g_s.addcmul_(g_s, g_s, value=-cfg.lr2)
            if norm_g:
                torch._foreach_addcmul_(norm_g, norm_g, norm_g, value=-cfg.lr2)
        elif implicit and cfg.implicit == "paper":
            # −(1/γ)·∇zℓ ⊙ ∇θℓ, ∇θℓ = m ⊙ ∇zℓ; the straight-through estimator passes it on times sign(s)
            g_s.addcmul_(torch.sign(bank.scores).mul_(bank.factor), gz.square(), value=-1.0 / cfg.gamma)
        mom, wd = cfg.mask_momentum, cfg.mask_weight_decay
        params: list[Tensor] = [bank.scores, *self.norm_params]
        bufs = self._momentum("mask_scores", [bank.scores], [g_s], mom, wd)
        if self.norm_params:
            bufs = bufs + self._momentum("mask_norm", self.norm_params, norm_g, mom, wd)
        if cfg.legacy_zero_grad and self.seen["weight_grad"]:
            # every buffer is computed before any update: with shared scores θ takes two steps from one value
            params += [bank.theta, *self.other_params]
            bufs = bufs + self._momentum("mask_theta", [bank.theta], [None], mom, wd)
            if self.other_params:
                bufs = bufs + self._momentum("mask_other", self.other_params, [None] * len(self.other_params),
                                             mom, wd)
        with torch.no_grad():
            for p, b in zip(params, bufs):
                p.add_(b, alpha=-lr)
        self.seen["score_grad"] = True
        bank.select()
        bank.write_z()
        if cfg.bn_passes == 4:
            with torch.no_grad():
                model(x)  # the reference's logging pass after the update
        return loss.detach()

    def finetune_step(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer) -> Tensor:
        """Plain masked training with the final mask (scores frozen)."""
        loss = self._loss_backward(x, y, optimizer.zero_grad)
        optimizer.step()
        self.enforce()
        return loss.detach()

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bank": self.bank.state_dict(), "seen": dict(self.seen),
                "bufs": {k: [b.clone() for b in v] for k, v in self.bufs.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank.load_state_dict(state["bank"])
        self.seen = {k: bool(v) for k, v in state.get("seen", {}).items()} or self.seen
        self.bufs = {k: [b.clone() for b in v] for k, v in state.get("bufs", {}).items()}
