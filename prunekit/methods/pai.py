"""Score-based pruning at initialization: SNIP, GraSP, SynFlow and iterative SNIP.

* ``snip`` — Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.
* ``grasp`` — Wang et al., "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020.
* ``synflow`` — Tanaka et al., "Pruning neural networks without any data by iteratively conserving
  synaptic flow", NeurIPS 2020.
* ``iter_snip`` — de Jorge et al., "Progressive Skeletonization: Trimming more fat from a network at
  initialization", ICLR 2021 (``naver/force``, ``prune_method=1``).
* ``prospr`` — Alizadeh et al., "Prospect Pruning: Finding Trainable Weights at Initialization using
  Meta-Gradients", ICLR 2022 (``mil-ad/prospr``).

Semantics follow the Synaptic-Flow code base (``ganguli-lab/Synaptic-Flow`` ``prune.py: prune_loop``
and ``Pruners/pruners.py``, shared by ``pvh1602/NPB``): scoring in eval mode (``train_mode=False``),
global allocation (``--mask-scope global``), ``rounds`` scoring rounds with the exponential schedule
``density_r = density ** (r / rounds)``, data = the first ``10 x num_classes`` samples
(``--prune-dataset-ratio 10``), and the sanity-check controls of ``prune_loop`` (``invert``,
``shuffle``, ``reinitialize``). Counts are exact: ``int(s * N)`` weights are removed (ties by index),
and weights pruned in an earlier round stay pruned.
"""
from __future__ import annotations

import itertools
from typing import Literal

import torch
from pydantic import Field, model_validator

from ..diagnostics import reinitialize_weights, shuffle_within_layers
from ..errors import ConfigError, ModelError
from ..modelio import batch_to, concat_batches
from ..scoring import SynFlowScorer, grasp_scores, snip_scores
from ..scoring.prospr import prospr_scores
from ..scoring.data import (cycle_batches, input_shape_from, model_device, num_classes_of, take_samples, threads_for,
                            train_mode)
from ..sparsity import FlatSelector, select
from .base import ALLOCATION_HELP, STRUCTURE_HELP, Allocation, InitPruner, MethodConfig, PruneContext, Structure, report_progress
from .registry import METHODS


class PaIConfig(MethodConfig):
    """Settings shared by the score-based PaI methods."""

    allocations = ("global", "uniform", "erk", "er", "custom")
    structures = ("unstructured", "N:M")

    allocation: Allocation = Field("global", description=ALLOCATION_HELP)
    structure: Structure = Field("unstructured", description=STRUCTURE_HELP)
    rounds: int = Field(1, description="score-and-prune rounds on the masked network, the last at the target")
    rounds_schedule: Literal["exponential", "linear"] = Field(
        "exponential", description="sparsity after round r: 1 - density ** (r / rounds), or target * r / rounds")
    train_mode: bool = Field(False, description="score in train mode (BatchNorm batch statistics; Synaptic-Flow "
                             "--train-mode) instead of eval mode")
    invert: bool = Field(False, description="keep the lowest scores instead (Frankle et al. 2021 control)")
    shuffle: bool = Field(False, description="after pruning, permute each layer's mask at random (per-layer "
                          "counts kept; a sanity-check control)")
    reinitialize: bool = Field(False, description="after pruning, draw new weights and keep the masks (a "
                               "sanity-check control)")
    seed: int | None = Field(None, description="for shuffle / reinitialize; None: drawn from the global RNG")

    @model_validator(mode="after")
    def _positive_rounds(self):
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} is not allowed; allowed: an integer >= 1")
        if self.structure != "unstructured" and self.rounds != 1:
            raise ValueError(f"structure={self.structure!r} fixes the sparsity of every round; allowed: rounds=1")
        return self


def check_scores(flat: torch.Tensor, what: str) -> None:
    """Refuse scores that cannot rank anything (all zero, or not finite): top-k would pick among ties."""
    if not bool(torch.isfinite(flat).all()) or not bool(flat.any()):
        raise ModelError(f"{what}: every score is {'zero' if bool(torch.isfinite(flat).all()) else 'not finite'} "
                         "on this model (its output does not depend on the pruned weights through positive "
                         "paths, e.g. a zero-initialised head); the mask would be a choice among ties")


def round_sparsity(target: float, r: int, rounds: int, schedule: str) -> float:
    """Sparsity after round ``r`` (1-based) of ``rounds``; the last round is exactly ``target``."""
    if r >= rounds:
        return target
    density = 1.0 - target
    if schedule == "exponential":
        return 1.0 - density ** (r / rounds)
    return target * r / rounds


class ScorePaI(InitPruner):
    """Base of the score-based PaI methods: ``rounds`` of score → select, then the controls."""

    Config = PaIConfig
    default_optimizer_state = "keep"
    config: PaIConfig

    def score(self, ctx: PruneContext, r: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _select(self, scores: dict[str, torch.Tensor], sparsity: float) -> None:
        cfg = self.config
        if cfg.invert:  # Frankle et al. 2021 control: keep the lowest scores instead
            scores = {n: -s for n, s in scores.items()}
        # weights pruned earlier stay pruned
        self.masks.update_(select(scores, self.masks, sparsity=sparsity, allocation=cfg.allocation,
                                  structure=cfg.structure))

    def prune(self, ctx: PruneContext | None = None):
        cfg = self.config
        ctx = ctx or PruneContext()
        with train_mode(self.model, cfg.train_mode):
            for r in range(1, cfg.rounds + 1):
                self.masks.apply_()  # every round scores the currently pruned network
                self._select(self.score(ctx, r), round_sparsity(self.target_sparsity(), r, cfg.rounds,
                                                                 cfg.rounds_schedule))
                report_progress(ctx, r, cfg.rounds)
        self._controls()
        self.enforce()
        return self.masks

    def _controls(self) -> None:
        cfg = self.config
        if cfg.shuffle or cfg.reinitialize:
            gen = self.generator()
            if cfg.shuffle:
                shuffle_within_layers(self.masks, gen)
            if cfg.reinitialize:
                reinitialize_weights(self.model, self.masks, generator=gen)


class DataPaIConfig(PaIConfig):
    num_samples: int | None = Field(None, description="samples scored; None: samples_per_class x the model's "
                                    "output width (Synaptic-Flow: 10 x classes)")
    samples_per_class: int = Field(10, description="samples per output class when num_samples is None "
                                   "(--prune-dataset-ratio)")


def _scoring_samples(model, ctx: PruneContext, cfg: DataPaIConfig, what: str):
    it = iter(ctx.batches if ctx.batches is not None else ())
    first = next(it, None)
    if first is None:
        raise ConfigError(f"{what} needs data: pass batches in the PruneContext (ctx.batches)")
    n = cfg.num_samples
    if n is None:
        n = cfg.samples_per_class * num_classes_of(model, first[0].to(model_device(model)))
    return take_samples(itertools.chain([first], it), n, model_device(model), what)


@METHODS.register("snip", family="pai")
class SNIP(ScorePaI):
    """SNIP: keep the largest ``|w * dL/dw|`` (global by default), scored once on the first samples."""

    Config = DataPaIConfig
    name = "snip"
    config: DataPaIConfig

    def score(self, ctx: PruneContext, r: int) -> dict[str, torch.Tensor]:
        if r == 1 or not hasattr(self, "_data"):
            self._data = _scoring_samples(self.model, ctx, self.config, self.name)
        io = self.io_for(ctx)
        return snip_scores(self.model, self.masks, self._data, io.loss_fn, output_fn=io.output_fn)

    def prune(self, ctx: PruneContext | None = None):
        try:
            return super().prune(ctx)
        finally:
            self.__dict__.pop("_data", None)


class GraSPConfig(DataPaIConfig):
    temperature: float = Field(200.0, description="the logits are divided by it in the loss whose "
                               "Hessian-gradient product is taken (the reference: 200)")
    eps: float = Field(1e-10, description="added to |sum of the scores| that normalises them")
    two_pass: bool = Field(False, description="the reference's two passes over the data instead of one pass "
                           "holding every batch's graph")
    second_order: Literal["fused", "autograd"] = Field(
        "fused", description="fused: convolutions with plain-kernel double backward and eval BatchNorm folded "
        "(same product up to float rounding, ~25 % cheaper); autograd: PyTorch's, the reference's arithmetic")


@METHODS.register("grasp", family="pai")
class GraSP(SNIP):
    """GraSP: keep the largest ``(Hg) * w`` (Synaptic-Flow's sign convention; see prunekit.scoring)."""

    Config = GraSPConfig
    name = "grasp"
    config: GraSPConfig

    def score(self, ctx: PruneContext, r: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        if r == 1 or not hasattr(self, "_data"):
            self._data = _scoring_samples(self.model, ctx, cfg, self.name)
        io = self.io_for(ctx)
        return grasp_scores(self.model, self.masks, self._data, io.loss_fn, cfg.temperature, cfg.eps, cfg.two_pass,
                            cfg.second_order, io.output_fn)


class SynFlowConfig(PaIConfig):
    rounds: int = Field(100, description="score-and-prune rounds (Synaptic-Flow: 100)")
    input_shape: tuple[int, ...] | None = Field(None, description="shape of the all-ones input, e.g. [3, 32, 32]; "
                                                "None: one sample of ctx.batches")
    dtype: Literal["float32", "float64"] = Field("float32", description="float type of the scoring copy of the "
                                                 "model (the reference: float32)")
    cpu_threads: int | None = Field(None, description="CPU threads of the scoring; None: one per million weights "
                                    "(batch-1 rounds are too small to share)")


@METHODS.register("synflow", family="pai")
class SynFlow(ScorePaI):
    """SynFlow: ``rounds`` (100) data-free rounds of ``|w * dR/dw|`` on the linearised network, global
    top-k with the exponential schedule. The rounds run on a flat copy of the weights (see
    :class:`prunekit.scoring.SynFlowScorer`)."""

    Config = SynFlowConfig
    name = "synflow"
    config: SynFlowConfig

    def prune(self, ctx: PruneContext | None = None):
        cfg = self.config
        ctx = ctx or PruneContext()
        shape = input_shape_from(cfg.input_shape, ctx.batches, self.name)
        names = self.masks.names()
        numels = [m.numel() for m in self.masks.values()]
        with threads_for(self.masks.params[0].device, sum(numels), cfg.cpu_threads):
            scorer = SynFlowScorer(self.model, self.masks, shape, getattr(torch, cfg.dtype), train=cfg.train_mode)
            keep = torch.cat([m.reshape(-1) for m in self.masks.values()])
            keep = self._rounds(scorer, keep, self.target_sparsity(), ctx)
        self.masks.update_({n: k.view_as(self.masks[n]) for n, k in zip(names, keep.split(numels))})
        self._controls()
        self.enforce()
        return self.masks

    def _rounds(self, scorer: SynFlowScorer, keep: torch.Tensor, target: float,
                ctx: PruneContext | None = None) -> torch.Tensor:
        cfg = self.config
        selector = FlatSelector({n: m.shape for n, m in self.masks.items()}, cfg.allocation, keep.device,
                                structure=cfg.structure)
        for r in range(1, cfg.rounds + 1):
            s = scorer.flat_scores(keep)
            if r == 1:
                check_scores(s, self.name)
            if cfg.invert:
                s = s.neg_()
            sparsity = round_sparsity(target, r, cfg.rounds, cfg.rounds_schedule)
            keep = selector(s, selector.counts(sparsity), nonnegative=not cfg.invert, active=keep)
            report_progress(ctx, r, cfg.rounds)
        return keep.clone()  # the selector's reused buffer


class IterSNIPConfig(PaIConfig):
    rounds: int = Field(60, description="SNIP rounds (naver/force README, CIFAR: --num_steps 60)")
    batches_per_round: int = Field(1, description="batches each round scores, the next ones of the stream "
                                   "(--num_batches 1, CIFAR-10)")
    train_mode: bool = Field(True, description="score in train mode (FORCE scores the network in its default "
                             "train mode)")


@METHODS.register("iter_snip", family="pai")
class IterSNIP(ScorePaI):
    """Iterative SNIP (FORCE code, ``prune_method=1``): ``rounds`` SNIP rounds on the masked network,
    each on the next ``batches_per_round`` batches, global top-k on the exponential schedule; removed
    weights are never recovered."""

    Config = IterSNIPConfig
    name = "iter_snip"
    config: IterSNIPConfig

    def prune(self, ctx: PruneContext | None = None):
        ctx = ctx or PruneContext()
        self._stream = cycle_batches(ctx.batches, self.name)
        try:
            return super().prune(ctx)
        finally:
            del self._stream

    def score(self, ctx: PruneContext, r: int) -> dict[str, torch.Tensor]:
        device = model_device(self.model)
        data = [(batch_to(x, device), y.to(device)) for x, y in itertools.islice(self._stream, self.config.batches_per_round)]
        # FORCE averages the gradients over the batches; SNIP's normalisation makes it the same ranking
        io = self.io_for(ctx)
        return snip_scores(self.model, self.masks, data, io.loss_fn, output_fn=io.output_fn)


class ProsPrConfig(PaIConfig):
    inner_steps: int = Field(3, description="differentiable SGD steps before the meta-gradient (--inner-steps)")
    inner_lr: float = Field(0.1, description="learning rate of those steps (--inner-lr)")
    inner_momentum: float = Field(0.0, description="momentum of those steps (--inner-momentum)")
    num_samples: int = Field(128, description="samples of the one batch used for every inner step "
                             "(--meta-batch-size)")
    train_mode: bool = Field(True, description="score in train mode (the reference prunes a copy in train mode)")


@METHODS.register("prospr", family="pai")
class ProsPr(ScorePaI):
    """ProsPr: keep the largest ``|dL(w_M)/dc|`` after M differentiable SGD steps (global top-k, one shot)."""

    Config = ProsPrConfig
    name = "prospr"
    config: ProsPrConfig

    def score(self, ctx: PruneContext, r: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        data = take_samples(ctx.batches, cfg.num_samples, model_device(self.model), self.name)
        x, y = concat_batches([b[0] for b in data]), torch.cat([b[1] for b in data])
        io = self.io_for(ctx)
        return prospr_scores(self.model, self.masks, x, y, io.loss_fn, cfg.inner_steps, cfg.inner_lr,
                             cfg.inner_momentum, io.output_fn)
