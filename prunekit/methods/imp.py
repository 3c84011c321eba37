"""IMP: iterative magnitude pruning with rewinding (the lottery-ticket procedure).

Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019 (rewind to initialization); Frankle, Dziugaite,
Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020 (rewind to step k);
Renda, Frankle & Carbin, "Comparing Rewinding and Fine-tuning in Neural Network Pruning", ICLR 2020
(learning-rate rewinding). Reference: ``facebookresearch/open_lth`` (``lottery/runner.py``,
``pruning/sparse_global.py``). ``allocation``: ``global`` (open_lth ``sparse_global``, the default) or a per-layer
budget (``uniform``: every layer loses the fraction of its survivors; ``erk``/``er``: each layer stops at
its own budget).

Level 0 trains the dense network; every later level removes ``prune_fraction`` of the surviving weights
(``ceil(fraction · remaining)``, the smallest |w| among survivors: masks are nested), then either rewinds the
surviving weights to step ``rewind_step`` of level 0 (``rewind="weights"``; 0 = the initialization) or
keeps them (``rewind="lr"``), and retrains with the training recipe from step ``rewind_step`` with a fresh
optimizer. The last level is clipped to exactly ``sparsity``. The experiments' ``"iterative"`` lifecycle
drives the levels through the level-chain methods of :class:`IMP` and records each one.
``structure="filter"|"channel"`` prunes whole units per layer by the L2 norm of their weights (linear
layers dense), the structured IMP baseline.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..sparsity import MaskSet, keep_counts, select
from ..sparsity.targets import unit_dim
from .base import PruneContext, Pruner
from .hydra import ScoreConfig
from .registry import METHODS


class ImpConfig(ScoreConfig):
    prune_fraction: float = Field(0.2, description="fraction of the surviving weights each level removes, "
                                  "ceil(fraction x remaining)")
    rewind: Literal["weights", "lr"] = Field(
        "weights", description="rewind the surviving weights to step rewind_step of level 0, or keep them and "
        "rewind only the learning rate (Renda et al.)")
    rewind_step: int = Field(0, ge=0, description="the step every level restarts from (0: the initialization)")

    @field_validator("prune_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("allowed: a fraction in (0, 1)")
        return v


@METHODS.register("imp", family="post-training")
class IMP(Pruner):
    """Iterative magnitude pruning; ``prune(ctx)`` alone prunes straight to the target (all remaining
    levels without training in between collapse into one magnitude prune), :meth:`prune_level` does one
    level, :meth:`plan` lists the kept counts of every level."""

    Config = ImpConfig
    name = "imp"
    config: ImpConfig

    def __init__(self, model: nn.Module, config: ImpConfig):
        super().__init__(model, config)
        self.level = 0
        self.rewind_state: dict[str, Tensor] | None = None
        structured = config.structure != "unstructured"
        self._dims = {n: unit_dim(model, n, config.structure) for n in self.masks.names()} if structured else None

    schedule = "iterative"

    # --- the level plan ------------------------------------------------------------------------
    def _budget(self) -> int | dict[str, int]:
        """Kept entries at the target: one total (global) or per layer (weights, or units)."""
        shapes = {n: tuple(m.shape) for n, m in self.masks.items()}
        units = None if self._dims is None else {n: shapes[n][d] for n, d in self._dims.items()}
        return keep_counts(shapes, self.target_sparsity(), self.config.allocation, units=units)

    def plan(self) -> list[tuple[int, ...]]:
        """Kept counts per level 1..L: one total (global) or one per layer (weights or units); every
        count loses ``ceil(prune_fraction * count)`` per level until its budget."""
        budget = self._budget()
        if isinstance(budget, int):
            current, targets = [self.masks.numel()], [budget]
        else:
            current = [m.numel() if self._dims is None else m.shape[self._dims[n]] for n, m in self.masks.items()]
            targets = list(budget.values())
        levels: list[tuple[int, ...]] = []
        while any(c > t for c, t in zip(current, targets)):
            current = [max(t, c - math.ceil(self.config.prune_fraction * c)) for c, t in zip(current, targets)]
            levels.append(tuple(current))
        return levels

    # --- pruning -------------------------------------------------------------------------------
    @torch.no_grad()
    def _prune_to(self, keep: tuple[int, ...]) -> None:
        # survivors rank by |w| (whole units by their L2 norm); pruned entries never come back
        names = self.masks.names()
        scores = {n: p.detach().abs() for n, p in zip(names, self.masks.params)}
        counts = keep[0] if isinstance(self._budget(), int) else dict(zip(names, keep))
        new = select(scores, self.masks, keep=counts, structure=self.config.structure, unit_dims=self._dims)
        for n, m in self.masks.items():
            m.copy_(new[n])
        self.enforce()

    def prune_level(self, level: int) -> MaskSet:
        """Prune to level ``level`` (1-based) of :meth:`plan` from the current weights and masks."""
        self.level = level
        self._collapsed = False
        self._prune_to(self.plan()[level - 1])
        return self.masks

    def prune(self, ctx: PruneContext | None = None) -> MaskSet:
        plan = self.plan()
        if plan:
            self.level = len(plan)
            self._prune_to(plan[-1])
            self._collapsed = True
        return self.masks

    def own_loop_check(self) -> None:
        if getattr(self, "_collapsed", False):
            raise ConfigError(
                f"{self.name}: prune() pruned to the target in one magnitude step (that is one-shot magnitude "
                "pruning, not IMP); an own loop runs the levels: for level in range(1, len(pruner.plan()) + 1): "
                "train, pruner.prune_level(level), pruner.rewind_(), retrain")

    def rewind_(self) -> None:
        """Rewind the surviving weights to the state recorded at step ``rewind_step`` of level 0 (the
        initialization for ``rewind_step=0``: recorded on the first post-step hook, so call
        :meth:`record_rewind_point` before training for k = 0); ``rewind="lr"`` keeps the weights."""
        if self.config.rewind == "lr":
            return
        if self.rewind_state is None:
            raise ConfigError(f"{self.name}: no rewind point recorded; call pruner.record_rewind_point() at step "
                              f"{self.config.rewind_step} of the dense training (before it, for rewind_step=0)")
        self.model.load_state_dict(self.rewind_state)
        self.enforce()

    def record_rewind_point(self) -> None:
        """Remember the model's current state as the rewind point."""
        self.rewind_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # --- the level chain (what the experiments' "iterative" lifecycle drives) -------------------
    def levels(self) -> int:
        """How many levels follow the dense level 0."""
        return len(self.plan())

    @property
    def trains_own_level0(self) -> bool:
        """Whether level 0 is a dense training of this chain's own, which records the rewind point at step
        ``rewind_step`` > 0, rather than the shared dense pretraining (rewinding to the initialization or
        learning-rate rewinding)."""
        return self.config.rewind == "weights" and self.config.rewind_step > 0

    @property
    def retrain_from(self) -> int:
        """The step of the training schedule at which every level after 0 starts (``rewind_step``)."""
        return self.config.rewind_step

    def level0_rewind_point(self, steps_trained: int) -> dict[str, Tensor]:
        """The state recorded by this chain's own level 0 (:attr:`trains_own_level0`) of ``steps_trained``
        steps; refused when ``rewind_step`` lies past its end."""
        if self.rewind_state is None:
            raise ConfigError(f"method.rewind_step={self.config.rewind_step} is past the end of training "
                              f"({steps_trained} steps)")
        return self.rewind_state

    def next_level(self, level: int, rewind: dict[str, Tensor]) -> None:
        """Level ``level`` (1-based): prune from the current weights and masks, then rewind the survivors to
        ``rewind`` (``rewind="weights"``: the level-0 state at ``rewind_step``) or keep them (``"lr"``)."""
        self.prune_level(level)
        if self.config.rewind == "weights":
            self.model.load_state_dict(rewind)
        self.enforce()

    def reached_level(self, level: int) -> None:
        """Level ``level`` was restored from a saved copy (weights and masks loaded by the caller)."""
        self.level = level

    # --- rewinding -----------------------------------------------------------------------------
    def after_optimizer_step(self, step: int) -> None:
        self.enforce()
        if self.level == 0 and self.config.rewind == "weights" and step == self.config.rewind_step:
            self.record_rewind_point()

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "level": self.level}
        if self.rewind_state is not None:
            state["rewind_state"] = {k: v.clone() for k, v in self.rewind_state.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.level = int(state.get("level", 0))
        rewind = state.get("rewind_state")
        self.rewind_state = {k: v.clone() for k, v in rewind.items()} if rewind is not None else None
