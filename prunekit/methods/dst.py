"""Dynamic sparse training: the engine of prunekit's during-training methods, plus SET and RigL.

* ``set`` — Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
  connectivity" (Nature Communications 2018), as RigL's code runs it (``SparseSETOptimizer``): every
  dT steps each layer drops ``int(f_t * nnz)`` active weights of smallest |w| and regrows as many at
  random inactive positions; ERK start with exact per-layer counts.
* ``rigl`` — Evci et al., "Rigging the Lottery: Making All Tickets Winners" (ICML 2020),
  ``google-research/rigl`` ``SparseRigLOptimizer``: regrowth where the dense |dL/dw| is largest, drop
  fraction ``f_0 (1 + cos(pi t / T_end)) / 2``, no update after ``end_fraction`` of training, and no
  gradient step at an update step (``cond_mask_update_op``; here: that step's gradients are dropped).

GMP and GraNet are in :mod:`.gmp`. :class:`SparseTraining` is the base of all of them: per-step
enforcement without host sync, updates with exact selection and no full sort, training-FLOPs accounting.
Growth candidates include weights dropped in the same call (regrown, such a weight keeps its value and
optimizer state); other regrown weights start at zero with zero optimizer state; every layer's count is
conserved exactly (the references' sort-based growth can fall short on ties).
"""
from __future__ import annotations

import hashlib
import math
import weakref
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from ..errors import ConfigError, MaskError
from ..sparsity import CosineDecay, allocate, select
from ..sparsity.measure import count_flops
from ..sparsity.topk import keep_above_kth, keep_largest
from ..sparsity.optim_state import reset_regrown_state_
from .base import ALLOCATION_HELP, Allocation, MethodConfig, PruneContext, Pruner
from .registry import METHODS


# --- settings and the base class ------------------------------------------------------------
class SparseTrainingConfig(MethodConfig):
    """Settings shared by the during-training methods. ``total_steps``/``steps_per_epoch`` are only for
    user loops that never call ``setup`` (the runner passes them in the context)."""

    update_frequency: int = Field(100, description="dT: optimizer steps between mask updates")
    seed: int | None = Field(None, description="random masks and growth; None: torch.initial_seed() (the "
                             "experiment seed)")
    total_steps: int | None = Field(None, description="training length in optimizer steps, for own loops that "
                                    "never call setup (the runner passes it)")
    steps_per_epoch: int | None = Field(None, description="optimizer steps per epoch, for own loops (the runner "
                                        "passes it)")

    @field_validator("update_frequency")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("allowed: an integer > 0 (optimizer steps)")
        return v


class SparseTraining(Pruner):
    """Base of the during-training methods: enforcement, update-step bookkeeping, FLOPs, state.

    Subclasses implement ``_is_update(step)`` (pure arithmetic, no host sync), ``_update(step)``,
    ``_final_masks()`` and optionally ``_initial_masks()`` / ``_size_schedules()``. ``prune()`` jumps to
    the end: masks at the target now, no later topology change (a static sparse run from there on)."""

    config: SparseTrainingConfig

    def __init__(self, model: nn.Module, config: SparseTrainingConfig):
        super().__init__(model, config)
        self._ready = False
        self._finished = False
        self._seed: int | None = config.seed
        self._seed_value()
        self._step = 0
        self._last_change = 0
        self._nnz = [m.numel() for m in self.masks.values()]
        self._nnz_steps = [0] * len(self._nnz)
        self._dense_grad_steps = 0
        self._dense_grad_nnz = [0] * len(self._nnz)
        self._input_shape: list[int] | None = None
        self._input_dtype: torch.dtype | None = None
        self._updated_at: int | None = None  # RigL updates before the optimizer step
        ref = weakref.ref(self)  # the model must not keep (or deep-copy) its pruner alive

        def capture_shape(module, inputs) -> None:
            pruner = ref()
            if pruner is not None and inputs and isinstance(inputs[0], Tensor):
                pruner._input_shape = list(inputs[0].shape[1:])
                pruner._input_dtype = inputs[0].dtype  # token ids: integer
            handle.remove()

        handle = model.register_forward_pre_hook(capture_shape)

    # --- schedule sizing ---------------------------------------------------------------------------
    def setup(self, ctx: PruneContext) -> None:
        total = ctx.total_steps or self.config.total_steps
        if not total:
            raise ConfigError(f"{self.name} needs the training length: PruneContext.total_steps or total_steps=")
        self.total_steps = int(total)
        self.steps_per_epoch = int(ctx.steps_per_epoch or self.config.steps_per_epoch or 0)
        self._size_schedules()
        self._ready = True

    def _size_schedules(self) -> None:
        pass

    def _ensure_ready(self) -> None:
        if not self._ready:
            self.setup(PruneContext())

    def _seed_value(self) -> int:
        if self._seed is None:  # the experiment seed (torch.manual_seed), without consuming the RNG
            self._seed = int(torch.initial_seed())
        return self._seed

    def _generator(self, salt: int, device: torch.device) -> torch.Generator:
        # hashed so that mask draws are not the model initialisation's own random stream
        digest = hashlib.sha256(f"{self.name}:{self._seed_value()}:{salt}".encode()).digest()
        g = torch.Generator(device=device)
        g.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return g

    # --- hooks -------------------------------------------------------------------------------------
    def on_init(self, ctx: PruneContext | None = None) -> None:
        self._initial_masks()
        self.enforce()
        self._record_change(self._step, dense_grad=False)

    def _initial_masks(self) -> None:
        pass

    def _random_masks_(self, sparsity: float, allocation: str, bernoulli: bool) -> None:
        """Random masks with per-layer budgets: sampled per weight (``rand < density``, GraNet's
        ``Masking.init``) or exact counts (RigL's random ERK masks)."""
        gen = self._generator(0, torch.device("cpu"))
        shapes = {n: tuple(p.shape) for n, p in zip(self.masks.names(), self.masks.params)}
        budgets = allocate(allocation, shapes, sparsity)
        if bernoulli:
            new = {n: torch.rand(s, generator=gen) < 1.0 - budgets[n] for n, s in shapes.items()}
        else:
            new = select({n: torch.rand(s, generator=gen) for n, s in shapes.items()}, sparsity=sparsity,
                         allocation=budgets)
        self.masks.update_(new)
        self._nnz = self._counts()

    def after_optimizer_step(self, step: int) -> None:
        self._step = step
        self.enforce()
        if self._finished:
            return
        self._ensure_ready()
        if self._is_update(step) and self._updated_at != step:
            self._update(step)

    def mask_changed_at(self, step: int) -> bool:
        return self._ready and not self._finished and self._is_update(step)

    def prune(self, ctx: PruneContext | None = None):
        self._final_masks()
        self.enforce()
        self._record_change(self._step, dense_grad=False)
        self._finished = True
        return self.masks

    @torch.no_grad()
    def _revive(self, born: dict[str, Tensor]) -> None:
        """Regrown connections start at zero: their weights already are (inactive weights are zero after
        every enforcement); the policy's growth part resets their optimizer state."""
        reset_regrown_state_(self.optimizer, self.masks, born, self.optimizer_state)

    # --- topology updates: drop the smallest drop_scores, regrow the largest grow_scores ------------------
    #: whether the growth criterion is the dense gradient (its FLOPs then count the dense weight gradient)
    grows_by_gradient: ClassVar[bool] = False

    def drop_scores(self, name: str, p: Tensor) -> Tensor:
        """What an update drops the smallest of among active weights: |w| (every DST method here)."""
        return p.detach().abs()

    def grow_scores(self, name: str, p: Tensor, step: int, rng) -> Tensor:
        """What an update regrows the largest of among inactive weights: uniform random (SET). ``rng(device)``
        is the update's generator (one stream per update, shared by its layers)."""
        return torch.rand(p.shape, generator=rng(p.device), device=p.device)

    @torch.no_grad()
    def drop_and_grow_(self, fraction: float, step: int, round_up: bool, reference: bool = False) -> dict[str, Tensor]:
        """One topology update of every layer in place; returns the newly born positions per layer.

        Drop ``ceil(fraction * nnz)`` (``round_up``: GraNet) or ``int(fraction * nnz)`` (RigL/SET) active
        weights of smallest :meth:`drop_scores`: exactly (index tie-break) or, with ``reference``, as
        ``magnitude_death`` (keep ``|w| >`` the ``(zeros + drop)``-th smallest, ties dropped too). Regrow as
        many as were dropped at positions inactive after the drop, by the largest :meth:`grow_scores`.
        """
        born: dict[str, Tensor] = {}
        gen: list[torch.Generator] = []

        def rng(device: torch.device) -> torch.Generator:
            if not gen:
                gen.append(self._generator(step, device))
            return gen[0]

        for i, (name, p, m) in enumerate(zip(self.masks.names(), self.masks.params, self.masks.values())):
            nnz, n = self._nnz[i], m.numel()
            n_drop = math.ceil(fraction * nnz) if round_up else int(fraction * nnz)
            if n_drop <= 0:
                continue
            score = self.drop_scores(name, p)
            if reference:
                keep = keep_above_kth(score, n - (n - nnz + n_drop) + 1) & m
                n_grow = nnz - int(torch.count_nonzero(keep))
            else:
                keep = keep_largest(score, nnz - n_drop, m, count=nnz)
                n_grow = n_drop
            grow = keep_largest(self.grow_scores(name, p, step, rng), n_grow, ~keep, count=n - nnz + n_grow)
            born[name] = grow & ~m
            m.copy_(keep | grow)
        self._revive(born)
        return born

    # --- FLOPs bookkeeping (python ints, updated at mask changes only) -----------------------------
    def _counts(self) -> list[int]:
        return [int(c) for c in torch.stack([m.sum() for m in self.masks.values()]).tolist()]

    def _record_change(self, step: int, dense_grad: bool, before: list[int] | None = None,
                       after: list[int] | None = None) -> None:
        """Masks with counts ``before`` (default: the tracked ones) were used by steps (last change,
        step]; ``dense_grad``: this step's growth needed the dense weight gradient."""
        span = step - self._last_change
        for i, c in enumerate(before if before is not None else self._nnz):
            self._nnz_steps[i] += c * span
            if dense_grad:
                self._dense_grad_nnz[i] += c
        if dense_grad:
            self._dense_grad_steps += 1
        self._last_change = step
        self._nnz = list(after) if after is not None else self._counts()

    def training_flops_ratio(self, input_shape: tuple[int, ...] | None = None) -> float | None:
        """Training FLOPs of the steps run so far relative to dense training of the same steps.

        RigL's convention (Evci et al. 2020, appendix H), per step: forward ``f_S`` + backward ``2 f_S``
        with ``f_S`` the forward FLOPs under the masks of that step (:func:`prunekit.sparsity.measure.count_flops`:
        conv/linear only, non-prunable layers dense); an update step whose growth needs the dense gradient
        pays the dense weight gradient instead of the sparse one (``2 f_S + f_D``). The sample shape is
        taken from the first forward pass unless given. None before any step.
        """
        shape = tuple(input_shape) if input_shape is not None else self._input_shape
        steps, tail = self._step, self._step - self._last_change
        if not steps or shape is None:
            return None
        device = self.masks.params[0].device
        numel = [m.numel() for m in self.masks.values()]

        def flops(values: list[float]) -> dict[str, float]:  # count_flops reads a layer's density as a mean
            densities = {n: torch.tensor(float(v)) for n, v in zip(self.masks.names(), values)}
            return count_flops(self.model, shape, densities, device=device, dtype=self._input_dtype)

        mean_density = [(acc + c * tail) / (n * steps) for acc, c, n in zip(self._nnz_steps, self._nnz, numel)]
        total = flops(mean_density)
        extra = 0.0
        if self._dense_grad_steps:
            other = flops([0.0] * len(numel))["sparse_flops"]
            dense_minus_sparse = [self._dense_grad_steps - dg / n for dg, n in zip(self._dense_grad_nnz, numel)]
            extra = flops(dense_minus_sparse)["sparse_flops"] - other
        return (3.0 * steps * total["sparse_flops"] + extra) / (3.0 * steps * total["flops"])

    # --- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["sparse_training"] = {
            "seed": self._seed, "step": self._step, "finished": self._finished,
            "last_change": self._last_change, "nnz": list(self._nnz), "nnz_steps": list(self._nnz_steps),
            "dense_grad_steps": self._dense_grad_steps, "dense_grad_nnz": list(self._dense_grad_nnz),
            "input_shape": self._input_shape,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        s = state.get("sparse_training")
        if s is None:
            self._nnz = self._counts()
            return
        self._seed, self._step, self._finished = s["seed"], int(s["step"]), bool(s["finished"])
        self._last_change = int(s["last_change"])
        self._nnz, self._nnz_steps = [int(v) for v in s["nnz"]], [int(v) for v in s["nnz_steps"]]
        self._dense_grad_steps = int(s["dense_grad_steps"])
        self._dense_grad_nnz = [int(v) for v in s["dense_grad_nnz"]]
        self._input_shape = s["input_shape"]


def gradient_scores(pruner: "SparseTraining", name: str, p: Tensor, step: int) -> Tensor:
    """RigL's and GraNet's growth criterion: the dense |dL/dw| of the update step."""
    if p.grad is None:
        raise MaskError(f"{pruner.name}: {name} has no gradient at update step {step}; gradient growth "
                        "needs the step's dense gradients (call the pruner before zero_grad)")
    return p.grad.detach().abs()


# --- fixed density: SET and RigL -------------------------------------------------------------------
class DropGrowConfig(SparseTrainingConfig):
    allocations = ("erk", "uniform", "er", "custom")

    allocation: Allocation = Field("erk", description=ALLOCATION_HELP)
    bernoulli: bool = Field(False, description="sample the start mask per weight (sparse_learning lineage) "
                            "instead of exact per-layer counts")
    drop_fraction: float = Field(0.3, description="f_0: fraction of each layer's active weights dropped and "
                                 "regrown per update (RigL paper: 0.3)")
    drop_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="drop fraction over training: f_0 (1 + cos(pi t / T_end)) / 2, or f_0 throughout")
    start_step: int = Field(0, description="no mask update before this optimizer step")
    end_fraction: float = Field(0.75, description="no mask update after this fraction of training (RigL's "
                                "maskupdate_end_step)")

    @field_validator("drop_fraction", "end_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("allowed: a float in [0, 1]")
        return v


class RigLConfig(DropGrowConfig):
    skip_optimizer_step: bool = Field(True, description="drop the gradients of an update step, so no weight step "
                                      "is taken there (RigL's cond_mask_update_op)")


class _FixedDensity(SparseTraining):
    config: DropGrowConfig
    default_optimizer_state = "reset_regrown"  # RigL: only new connections get zeroed slots

    def _size_schedules(self) -> None:
        cfg = self.config
        self.end_step = int(cfg.end_fraction * self.total_steps)
        first = max(cfg.start_step, 1)
        first += -first % cfg.update_frequency
        if first > self.end_step:
            raise ConfigError(f"{self.name}: no mask update between step {cfg.start_step} and {self.end_step} with "
                              f"update_frequency={cfg.update_frequency}; allowed: a smaller update_frequency")
        self.decay = CosineDecay(cfg.drop_fraction, max(1, self.end_step - cfg.start_step), eta_min=0.0)

    def drop_fraction_at(self, step: int) -> float:
        """RigL's ``cosine_decay(f_0, global_step, end - begin)`` (the step itself, not step - begin)."""
        self._ensure_ready()
        return self.config.drop_fraction if self.config.drop_schedule == "constant" else self.decay.value(step)

    def _is_update(self, step: int) -> bool:
        return self.config.start_step <= step <= self.end_step and step > 0 and step % self.config.update_frequency == 0

    def _initial_masks(self) -> None:
        self._random_masks_(self.config.sparsity, self.config.allocation, self.config.bernoulli)

    def _final_masks(self) -> None:
        self._initial_masks()

    def _update(self, step: int) -> None:
        counts = list(self._nnz)
        self.drop_and_grow_(self.drop_fraction_at(step), step, round_up=False)
        self.enforce()
        self._record_change(step, dense_grad=self.grows_by_gradient, after=counts)


@METHODS.register("set", family="dst")
class SET(_FixedDensity):
    """SET: magnitude drop, random regrowth (RigL's ``SparseSETOptimizer``), ERK start."""

    Config = DropGrowConfig
    name = "set"


@METHODS.register("rigl", family="dst")
class RigL(_FixedDensity):
    """RigL: SET with regrowth by the dense gradient (cosine drop fraction, ERK start)."""

    Config = RigLConfig
    name = "rigl"
    grows_by_gradient = True
    config: RigLConfig

    def grow_scores(self, name: str, p: Tensor, step: int, rng) -> Tensor:
        return gradient_scores(self, name, p, step)
    own_loop_refusal = ("its growth reads the dense gradients before the optimizer step, which pruner.step() "
                        "after optimizer.step() cannot see; use optimizer = pruner.wrap(optimizer) and call "
                        "optimizer.step() as usual")

    def after_backward(self, step: int) -> None:
        # the update sees the weights before this step's update, as in RigL's cond_mask_update_op; a user
        # loop that only calls pruner.step() gets the update after the step (after_optimizer_step)
        if self._finished:
            return
        self._ensure_ready()
        if not self._is_update(step):
            return
        self._update(step)
        self._updated_at = step
        if self.config.skip_optimizer_step:
            for p in self.model.parameters():
                p.grad = None


