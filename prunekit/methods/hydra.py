"""HYDRA and the score machinery BiP builds on.

HYDRA (Sehwag, Wang, Mittal & Jana, "HYDRA: Pruning Adversarially Robust Neural Networks", NeurIPS 2020;
reference ``inspire-group/hydra``) learns a real-valued importance score per weight: the mask is the
top-k of |score| (per layer in HYDRA, global in BiP's copy of it), the forward pass uses ``m ⊙ θ`` with
the pretrained weights θ frozen, and the gradient reaches the scores straight through the top-k
(``models/layers.py: GetSubnet``). Scores start from the weights ("scaled-score init":
``sqrt(6 / fan_in) · θ / max|θ|`` per layer, ``utils/model.py: initialize_scaled_score``). After the score
phase the runner fine-tunes the kept weights (``schedule = "after"``).

:class:`ScoreBank` holds scores, dense weights θ and the masks of all target weights in flat buffers, so a
global top-k is one O(n) selection on one tensor and the straight-through score gradient is
``sign(s) ⊙ θ ⊙ ∇z ℓ`` computed from the ordinary gradient of the model's (masked) weights ``z = θ ⊙ m``:
no custom autograd function and no per-forward re-sorting as in the reference.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..errors import ConfigError, NumericError
from ..modelio import DEFAULT_IO, ModelIO
from ..sparsity import FlatSelector, MaskSet, keep_counts
from ..sparsity.targets import unit_dim
from .base import ALLOCATION_HELP, STRUCTURE_HELP, Allocation, MethodConfig, PruneContext, Pruner, Structure
from .registry import METHODS

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def epoch_factor(kind: str, epoch: int, epochs: int) -> float:
    """LR multiplier at 0-based ``epoch`` of ``epochs`` (BiP/HYDRA ``utils/schedules.py``).

    ``cosine_bip``: ½(1+cos((e−1)/E·π)) (the references' epoch−1 offset); ``cosine``: without it;
    ``step``: ×0.1 from 50 %, ×0.01 from 75 % (``step_schedule`` — what BiP's ``train.py`` actually wires
    to the mask optimizer); ``step_mask``: ×0.1 from 75 %, ×0.01 from 90 %, ×0.001 from 100 %
    (``step_mask_schedule``, defined but never called); ``constant``."""
    e, n = epoch, max(1, epochs)
    if kind == "cosine_bip":
        return 0.5 * (1.0 + math.cos((e - 1) / n * math.pi))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(e / n * math.pi))
    if kind == "step":
        return 0.01 if e >= 0.75 * n else 0.1 if e >= 0.5 * n else 1.0
    if kind == "step_mask":
        return 0.001 if e >= n else 0.01 if e >= 0.9 * n else 0.1 if e >= 0.75 * n else 1.0
    return 1.0


@torch.no_grad()
def sgd_momentum_(params: list[Tensor], grads: list[Tensor | None], bufs: list[Tensor], first: bool,
                  momentum: float, weight_decay: float) -> list[Tensor]:
    """The buffer update of ``torch.optim.SGD`` (no dampening): ``buf = μ·buf + g + wd·p``, ``buf = d`` on
    the first step. A ``None`` gradient counts as zero (a "frozen" tensor holding a zeroed ``.grad`` under
    torch<2.0 ``zero_grad``). Returns the buffers; the caller applies ``p -= lr·buf``."""
    d = [p.mul(weight_decay) if g is None else g.add(p, alpha=weight_decay) for p, g in zip(params, grads)]
    if first or not bufs:
        bufs[:] = d
    else:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, d)
    return bufs


class ScoreBank:
    """Scores, dense weights θ and masks of a pruner's target weights, in flat buffers.

    Between steps the model's weight tensors hold ``z = θ ⊙ m`` (so evaluation, checkpoints and the
    mask invariants see the pruned model) while θ keeps the values of currently pruned weights, which a
    later mask may bring back. ``shared=True`` makes the scores *be* θ (BiP's ``--scaled-score-init``
    aliases ``popup_scores`` and ``weight``). The pruner's ``MaskSet`` is rebuilt as views of one flat bool
    buffer, so a global selection writes every layer's mask with one copy.
    """

    def __init__(self, pruner: Pruner, structure: str, allocation: str, sparsity: float, shared: bool):
        masks = pruner.masks
        self.params: list[Tensor] = masks.params
        self.names = masks.names()
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        p0 = self.params[0]
        total = sum(self.sizes)
        self.structure, self.allocation, self.shared = structure, allocation, shared
        self.theta = torch.zeros(total, dtype=p0.dtype, device=p0.device)
        self.scores = self.theta if shared else torch.zeros_like(self.theta)
        self.keep = torch.ones(total, dtype=torch.bool, device=p0.device)
        self.factor = torch.ones_like(self.theta)
        self.theta_v, self.scores_v, self.keep_v, self.factor_v = (self.views(t) for t in
                                                                  (self.theta, self.scores, self.keep, self.factor))
        pruner.masks = MaskSet(dict(zip(self.names, self.keep_v))).bind(pruner.model)
        shapes = {n: tuple(s) for n, s in zip(self.names, self.shapes)}
        dims = None if structure == "unstructured" else {n: unit_dim(pruner.model, n, structure) for n in self.names}
        self.total_keep = keep_counts(shapes, sparsity)  # the global count (also what tests compare with)
        self._selector = FlatSelector(shapes, allocation, p0.device, out=self.keep, warm=True, structure=structure,
                                      unit_dims=dims)
        self.counts = self._selector.counts(sparsity)

    def views(self, flat: Tensor) -> list[Tensor]:
        return [t.view(s) for t, s in zip(flat.split(self.sizes), self.shapes)]

    # --- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_model(self, score_init: str) -> None:
        """θ ← the model's current weights; scores per ``score_init`` (``shared``: the scores are θ,
        ``weights``: a copy, ``scaled``: HYDRA's ``sqrt(6/fan_in)·θ/max|θ|`` per layer)."""
        torch.cat([p.detach().reshape(-1) for p in self.params], out=self.theta)
        if self.shared:
            return
        self.scores.copy_(self.theta)
        if score_init == "scaled":
            for s in self.scores_v:
                fan_in = s[0].numel()
                s.mul_(math.sqrt(6.0 / fan_in) / s.abs().max().clamp_min(torch.finfo(s.dtype).tiny))

    # --- masks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def select(self) -> None:
        """Masks ← top-k of |scores|: one global selection, per-layer counts, or whole filters
        (dim 0) / channels (dim 1) ranked by the L2 norm of their |scores| (BiP ``GetSubnetFilter`` /
        ``GetSubnetChannel`` with ``p = 2``)."""
        kept = self._selector(self.scores.abs(), self.counts, nonnegative=True)
        if kept.data_ptr() != self.keep.data_ptr():
            self.keep.copy_(kept)
        self.factor.copy_(self.keep)

    def check_finite(self, where: str) -> None:
        """Refuse non-finite scores (one host sync; call once per epoch, not per step): a mask chosen among
        NaNs would be silently arbitrary."""
        if not bool(torch.isfinite(self.scores).all()):
            raise NumericError(f"{where}: the pruning scores are not finite (a diverged score optimizer: lower its "
                               "learning rate); the mask would be a choice among NaN/inf scores")

    @torch.no_grad()
    def write_z(self) -> None:
        """Model weights ← θ ⊙ m."""
        data = [p.data for p in self.params]
        torch._foreach_copy_(data, self.theta_v)
        torch._foreach_mul_(data, self.factor_v)

    @torch.no_grad()
    def load_theta(self) -> None:
        """Model weights ← dense θ (for an optimizer step that must see the pruned values too)."""
        torch._foreach_copy_([p.data for p in self.params], self.theta_v)

    @torch.no_grad()
    def read_theta(self) -> None:
        """θ ← the model's (dense) weights after an optimizer step."""
        torch.cat([p.detach().reshape(-1) for p in self.params], out=self.theta)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Weight gradients ``∇z`` → ``∇θ = m ⊙ ∇z`` (chain rule through ``z = θ ⊙ m``)."""
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):
            torch._foreach_mul_(grads, self.factor_v)

    @torch.no_grad()
    def grad_z(self) -> Tensor:
        """∇z ℓ of all target weights as one flat tensor (zeros where a weight got no gradient)."""
        return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                          for p in self.params])

    @torch.no_grad()
    def score_grad(self, gz: Tensor) -> Tensor:
        """Straight-through gradient of the scores: ∂ℓ/∂|s| = θ ⊙ ∇z (the top-k passes g unchanged),
        times sign(s) for the absolute value."""
        return torch.sign(self.scores).mul_(self.theta).mul_(gz)

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        state = {"theta": self.theta.clone()}
        if not self.shared:
            state["scores"] = self.scores.clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.theta.copy_(state["theta"])
        if not self.shared:
            self.scores.copy_(state["scores"])
        self.factor.copy_(self.keep)


def split_params(model: nn.Module, targets: list[Tensor]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(normalization-layer parameters, every other non-target parameter) of ``model``. The references
    train BN affine parameters together with the scores (``freeze_vars`` skips ``BatchNorm2d``)."""
    ids = {id(t) for t in targets}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    norm, other = [], []
    for p in model.parameters():
        if id(p) in ids:
            continue
        (norm if id(p) in norm_ids else other).append(p)
    return norm, other


class ScoreConfig(MethodConfig):
    """Settings shared by score-based methods (HYDRA, BiP)."""

    allocations = ("global", "uniform", "erk", "er", "custom")
    structures = ("unstructured", "filter", "channel")

    structure: Structure = Field("unstructured", description=STRUCTURE_HELP)
    allocation: Allocation = Field("global", description=ALLOCATION_HELP)

    @model_validator(mode="before")
    @classmethod
    def _structured_defaults(cls, data: Any) -> Any:
        # structured BiP/HYDRA prune every conv per layer and keep linear layers dense (methods.md §3b)
        if isinstance(data, dict) and data.get("structure", "unstructured") != "unstructured":
            data = dict(data)
            data.setdefault("allocation", "uniform")
            if data.get("targets", "default") == "default":
                data["targets"] = "bip_structured"
        return data

    @model_validator(mode="after")
    def _structured_allocation(self) -> "ScoreConfig":
        if self.structure != "unstructured" and self.allocation == "global":
            raise ValueError(f"structure={self.structure!r} prunes a fraction of every layer; "
                             "allowed allocation: uniform, erk, er or a custom map")
        return self


class HydraConfig(ScoreConfig):
    allocation: Allocation = Field("uniform", description=ALLOCATION_HELP + " (HYDRA: uniform, per layer)")
    score_init: Literal["scaled", "weights", "shared"] = Field(
        "scaled", description="scores start as sqrt(6 / fan_in) theta / max|theta| (HYDRA), a copy of the weights "
        "(with score_epochs=0: the magnitude mask), or are the weights (BiP's hydra.yml)")
    score_epochs: int = Field(20, ge=0, description="passes over the batches training the scores (HYDRA README: "
                              "20; BiP configs/*/hydra.yml: 100)")
    score_lr: float = Field(0.1, ge=0.0, description="SGD learning rate of the scores")
    score_momentum: float = Field(0.9, ge=0.0, description="SGD momentum of the scores")
    score_weight_decay: float = Field(1e-4, ge=0.0, description="SGD weight decay of the scores")
    score_schedule: Literal["cosine_bip", "cosine", "step", "constant"] = Field(
        "cosine_bip", description="learning-rate schedule of the scores over score_epochs (cosine_bip: the "
        "references' cosine with its epoch - 1 offset)")
    train_norm: bool = Field(True, description="also train the normalisation layers' affine parameters with the "
                             "scores (the reference)")


@METHODS.register("hydra", family="post-training")
class Hydra(Pruner):
    """HYDRA: learn scores with the weights frozen (straight-through top-k), then fine-tune.

    ``prune(ctx)`` trains the scores for ``score_epochs`` passes over ``ctx.batches`` (SGD with
    momentum; BN affine parameters trained too when ``train_norm``, as the reference) and sets the final
    mask. ``score_init``: ``scaled`` (HYDRA), ``weights`` (a copy of θ; with ``score_epochs=0`` this is
    exactly the magnitude/OMP mask, also for filters and channels), ``shared`` (scores *are* the weights,
    as BiP's ``configs/*/hydra.yml`` ran it: the "frozen" weights then move with the scores).
    """

    Config = HydraConfig
    name = "hydra"
    config: HydraConfig

    def __init__(self, model: nn.Module, config: HydraConfig):
        super().__init__(model, config)
        self.bank = ScoreBank(self, config.structure, config.allocation, self.target_sparsity(),
                              shared=config.score_init == "shared")
        self.norm_params, _ = split_params(model, self.bank.params)
        self._bufs: list[Tensor] = []

    schedule = "after"

    def prune(self, ctx: PruneContext | None = None) -> MaskSet:
        cfg = self.config
        self.bank.init_from_model(cfg.score_init)
        self.bank.select()
        self.bank.write_z()
        self._bufs = []
        if cfg.score_epochs and ctx is None:  # an explicit context without batches: initialise for score_step()
            raise ConfigError(f"{self.name} trains its scores on data for score_epochs={cfg.score_epochs}: call "
                              "pruner.prune(PruneContext(batches=...)); score_epochs=0 keeps the initial scores")
        if ctx is not None and ctx.batches is not None:
            io = self.io_for(ctx)
            for epoch in range(cfg.score_epochs):
                lr = cfg.score_lr * epoch_factor(cfg.score_schedule, epoch, cfg.score_epochs)
                if hasattr(ctx.batches, "set_epoch"):
                    ctx.batches.set_epoch(epoch)
                for x, y in ctx.batches:
                    self.score_step(x, y, lr, io)
                self.bank.check_finite(f"{self.name}: score epoch {epoch}")
        return self.masks

    def score_step(self, x: Tensor, y: Tensor, lr: float, io: ModelIO = DEFAULT_IO) -> Tensor:
        """One SGD step on the scores (and BN affine parameters) with the weights frozen."""
        cfg, bank, model = self.config, self.bank, self.model
        model.train()
        loss = io.loss(model, x, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        g_s = bank.score_grad(bank.grad_z())
        params, grads = [bank.scores], [g_s]
        if cfg.train_norm:
            params += self.norm_params
            grads += [p.grad for p in self.norm_params]
        bufs = sgd_momentum_(params, grads, self._bufs, not self._bufs, cfg.score_momentum, cfg.score_weight_decay)
        with torch.no_grad():
            torch._foreach_add_(params, bufs, alpha=-lr)
        bank.select()
        bank.write_z()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bank": self.bank.state_dict(), "bufs": [b.clone() for b in self._bufs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank.load_state_dict(state["bank"])
        self._bufs = [b.clone() for b in state.get("bufs", [])]
