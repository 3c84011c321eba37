"""The Pruner base class: masks plus lifecycle hooks.

A method is a small class that wires a scorer, an allocator, a selector and a schedule together and
implements whichever hooks it needs. The built-in trainer calls them in this order, and a user's own
training loop can call :meth:`Pruner.step` after ``optimizer.step()`` (or use :meth:`Pruner.wrap`):

``setup`` (every phase start, also on resume) → ``on_init`` (before training: pruning at
initialization, initial sparse masks) → per step: ``before_step`` →
``after_backward`` (dense gradients visible) → ``after_optimizer_step`` (default: enforce masks) →
``on_epoch_end`` → ``on_train_end``.

Hook arguments are plain ints (step/epoch) and a :class:`PruneContext` that exposes the data and
the optimizer when a method needs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ..errors import ConfigError
from ..modelio import DEFAULT_IO, ModelIO
from ..sparsity import (MaskSet, check_allocation, check_sparsity, check_structure,
                        nm_sparsity, sparsity_from_compression)
from ..sparsity.optim_state import check_policy, enforce_optimizer_state_
from ..sparsity.targets import resolve_targets, targets_table


#: the type of every method's ``allocation`` setting: an allocator's name, ``global``, or a custom
#: ``{layer name or glob: sparsity}`` map; each Config lists the kinds it accepts in ``allocations``
Allocation = str | dict[str, float]
#: the type of every method's ``structure`` setting (``unstructured``, ``filter``, ``channel``, ``N:M``)
Structure = str

ALLOCATION_HELP = ("how the sparsity is spread over the layers: global (one threshold), uniform, erk, er, or a "
                   "{layer name or glob: sparsity} map (custom); the kinds listed in the type are allowed")
STRUCTURE_HELP = ("what is removed: single weights (unstructured), whole filters or channels, or N:M groups "
                  "(e.g. 2:4, which fixes the sparsity at 1 - N/M); the kinds listed in the type are allowed")


class MethodConfig(BaseModel):
    """Settings every method accepts. Subclasses add their own fields; unknown keys are rejected.

    A method with an ``allocation`` (``structure``) setting declares the kinds it accepts in
    ``allocations`` (``structures``); every value is checked against them here, in one place."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    allocations: ClassVar[tuple[str, ...]] = ()
    structures: ClassVar[tuple[str, ...]] = ("unstructured",)

    name: str = Field(description="the method's registry name")
    sparsity: float = Field(0.0, description="fraction of the target weights that are zero at the end, in [0, 1)")
    compression: float | None = Field(None, description="the DPaI / Synaptic-Flow unit, density = 10**-compression "
                                      "(2.5 -> 99.68 %); sets sparsity")
    targets: str | dict[str, Any] = Field("default", description="which parameters are pruned: a preset or a "
                                          "mapping of Targets fields (`prunekit targets MODEL` shows the result)")
    optimizer_state: str | None = Field(None, description="what happens to optimizer state of pruned/regrown "
                                        "weights; None: the method's own default")

    @model_validator(mode="before")
    @classmethod
    def _compression_to_sparsity(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("compression") is not None:
            s = sparsity_from_compression(data["compression"])
            if "sparsity" in data and abs(float(data["sparsity"]) - s) > 1e-12:
                raise ValueError(f"compression={data['compression']} means sparsity={s:.6g} but sparsity="
                                 f"{data['sparsity']} was also given; allowed: one of the two")
            data = {**data, "sparsity": s}
        return data

    @model_validator(mode="before")
    @classmethod
    def _nm_fixes_sparsity(cls, data: Any) -> Any:
        s = nm_sparsity(data.get("structure", "")) if isinstance(data, dict) else None
        if s is not None:
            check_structure(data["structure"], cls.structures)
            if "allocation" in data:
                raise ValueError(f"structure={data['structure']} fixes every layer's sparsity at {s:g}, so allocation "
                                 f"does not apply; allowed: leave allocation out")
            if "sparsity" in data and abs(float(data["sparsity"]) - s) > 1e-12:
                raise ValueError(f"structure={data['structure']} fixes sparsity={s:g} but sparsity={data['sparsity']} "
                                 f"was given; allowed: leave sparsity out, or {s:g}")
            data = {**data, "sparsity": s}
        return data

    @field_validator("sparsity")
    @classmethod
    def _sparsity_in_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:  # also rejects NaN
            raise ValueError("allowed: a float in [0, 1)")
        return v

    @field_validator("allocation", check_fields=False)
    @classmethod
    def _allowed_allocation(cls, v: Any) -> Any:
        return v if v is None else check_allocation(v, cls.allocations)

    @field_validator("structure", check_fields=False)
    @classmethod
    def _allowed_structure(cls, v: Any) -> Any:
        return v if v is None else check_structure(v, cls.structures)

    @field_validator("optimizer_state")
    @classmethod
    def _known_policy(cls, v: str | None) -> str | None:
        return v if v is None else check_policy(v)


@dataclass
class PruneContext:
    """What a hook may need besides the model: batches for data-driven scores, the optimizer, the
    loss function and output rule (``loss_fn(logits, target)``, ``output_fn(model_output) -> logits``,
    see :mod:`prunekit.modelio`; ``None``: the defaults there), the device, and the total number of
    optimizer steps of the phase. ``second_batches`` is the split's extra stream when it has one (BiP's
    independently shuffled pass over the train set, a held-out validation set)."""

    batches: Iterable[tuple[Any, torch.Tensor]] | None = None
    second_batches: Iterable[tuple[Any, torch.Tensor]] | None = None
    optimizer: torch.optim.Optimizer | None = None
    loss_fn: Any = None
    output_fn: Any = None
    #: ``progress(done, total)`` for a pruning search's rounds or steps (shown by the CLI); ``None``: silent
    progress: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    total_steps: int = 0
    steps_per_epoch: int = 0


class Pruner:
    """Base class of every method. ``Config`` is its pydantic settings model.

    ``schedule`` says when the experiment runner prunes, and so which lifecycle
    (:mod:`prunekit.experiments.lifecycles`) runs the method: ``"init"`` (before training), ``"after"``
    (after dense pretraining, then fine-tune), ``"during"`` (the hooks do it while training),
    ``"iterative"`` (IMP levels) or ``"none"`` (dense). A method declares it as a class attribute, or
    overrides :meth:`schedule_for` where a setting decides (magnitude's ``when``); an instance's
    ``schedule`` is :meth:`schedule_for` of its settings.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    default_optimizer_state: ClassVar[str] = "keep"
    name: ClassVar[str] = "base"

    def __init__(self, model: nn.Module, config: MethodConfig):
        self.model = model
        self.config = config
        self.io: ModelIO = DEFAULT_IO  # ``create(..., loss_fn=, output_fn=)`` sets the user's
        self.masks = MaskSet.from_model(model, config.targets)
        self.optimizer_state = check_policy(config.optimizer_state or self.default_optimizer_state)
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule = self.schedule_for(config)

    def io_for(self, ctx: "PruneContext | None") -> ModelIO:
        """The output rule and loss of this call: the context's, else those given to ``create``."""
        return self.io if ctx is None else self.io.merged(ctx.output_fn, ctx.loss_fn)

    # --- scheduling ----------------------------------------------------------------------------
    schedule: str = "during"

    @classmethod
    def schedule_for(cls, config: MethodConfig) -> str:
        """When a run of this method with ``config`` prunes, without a model: the declared ``schedule``."""
        return cls.schedule

    @property
    def prunes(self) -> bool:
        """Whether this run's masks can hold zeros (False only for the dense baseline, schedule ``"none"``):
        the trainer logs sparsity and distributed runs compare masks only where they can."""
        return self.schedule != "none"

    def training_flops_ratio(self, input_shape: tuple[int, ...] | None = None) -> float | None:
        """Training FLOPs of the steps run so far relative to dense training, for methods that change their
        masks while training and count it step by step (RigL/GraNet convention); None: the others (their
        cost follows from the final masks)."""
        return None

    # --- hooks (no-ops unless a method needs them) ----------------------------------------------
    def setup(self, ctx: PruneContext) -> None:
        """Before a training phase, also when resuming: size schedules from ``ctx.total_steps``.
        Must not change masks or weights (a resumed run restores those from its checkpoint)."""

    def on_init(self, ctx: PruneContext) -> None:
        """Before any training step: pruning-at-initialization methods set the masks here."""

    def before_step(self, step: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        pass

    def after_optimizer_step(self, step: int) -> None:
        """Default: enforce the masks on the weights (and optimizer state, per policy)."""
        self.enforce()

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def on_train_end(self) -> None:
        pass

    def mask_changed_at(self, step: int) -> bool:
        """Whether the hooks of optimizer step ``step`` may have changed the masks (distributed runs
        compare them across processes then). Pure arithmetic: called after every step."""
        return False

    def prune(self, ctx: PruneContext | None = None) -> MaskSet:
        """Prune now (one-shot methods) and return the masks. Default: nothing to do."""
        return self.masks

    def search_history(self) -> list[dict[str, float]]:
        """One dict per step of the last pruning search (DPaI: objective, log P, nodes ...), for plots;
        empty for methods without one. The runner writes it to ``search.json``."""
        return []

    # --- enforcement ---------------------------------------------------------------------------
    def enforce(self) -> None:
        """Zero pruned weights (in place) and apply the optimizer-state policy's per-step part."""
        self.masks.apply_()
        enforce_optimizer_state_(self.optimizer, self.masks, self.optimizer_state)

    #: why ``step()`` after ``optimizer.step()`` is not this method, and the call it needs instead;
    #: ``None`` where the post-step hook is the whole per-step work (``step()`` then refuses nothing)
    own_loop_refusal: ClassVar[str | None] = None

    def own_loop_check(self) -> None:
        """Refuse a user loop that would silently run another method (see ``own_loop_refusal``)."""
        if self.own_loop_refusal is not None:
            raise ConfigError(f"{self.name}: {self.own_loop_refusal}")

    def step(self) -> None:
        """Call after ``optimizer.step()`` in your own loop: runs the post-step hook. Methods whose
        update is more than that (BiP's bi-level step, RigL's pre-step growth) refuse in one line and
        name the call they need."""
        if not getattr(self, "_user_step", 0):
            self.own_loop_check()
        self._user_step = getattr(self, "_user_step", 0) + 1
        self.after_optimizer_step(self._user_step)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def wrap(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Return ``optimizer`` with ``step()`` patched to run the hooks around the update."""
        self.attach(optimizer)
        inner_step = optimizer.step
        pruner = self

        def step(*args, **kwargs):
            pruner._user_step = getattr(pruner, "_user_step", 0) + 1
            pruner.after_backward(pruner._user_step)
            out = inner_step(*args, **kwargs)
            pruner.after_optimizer_step(pruner._user_step)
            return out

        optimizer.step = step  # type: ignore[method-assign]
        return optimizer

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks plus method state (tensors and plain values only, loadable with weights_only)."""
        return {"masks": self.masks.state_dict(), "user_step": getattr(self, "_user_step", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks.load_state_dict(state["masks"], source="checkpoint")
        self._user_step = int(state.get("user_step", 0))

    def report(self) -> str:
        """The per-layer sparsity table, then every parameter kept dense with the reason and the setting
        that would prune it (biases, norms, embeddings, excluded layers), and the tied names."""
        rows = resolve_targets(self.config.targets).explain(self.model)
        return self.masks.summary_table() + "\n\nkept dense and tied:\n" + targets_table(
            [r for r in rows if not r.pruned or r.tied])

    def target_sparsity(self) -> float:
        return check_sparsity(self.config.sparsity)


def report_progress(ctx: "PruneContext | None", done: int, total: int) -> None:
    """Tell the context's ``progress`` callback, if any, that ``done`` of ``total`` rounds are finished."""
    if ctx is not None and ctx.progress is not None:
        ctx.progress(done, total)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class InitPruner(Pruner):
    """Prunes once before training (``on_init`` calls ``prune``). :meth:`generator` is seeded by
    ``config.seed``, or by a seed drawn from the global RNG when the pruner is built, so a seeded model
    build fixes the mask even if the global RNG is used between construction and pruning."""

    schedule = "init"

    def __init__(self, model: nn.Module, config: "MethodConfig"):
        super().__init__(model, config)
        seed = getattr(config, "seed", None)
        self._seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item())

    def on_init(self, ctx: "PruneContext | None" = None) -> None:
        self.prune(ctx)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator at this pruner's seed (the same stream on every call)."""
        gen = torch.Generator()
        gen.manual_seed(self._seed)
        return gen
