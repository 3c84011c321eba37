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
from pydantic import model_validator

from ..diagnostics import reinitialize_weights, shuffle_within_layers
from ..errors import ConfigError, ModelError
from ..modelio import batch_to, concat_batches
from ..scoring import SynFlowScorer, grasp_scores, snip_scores
from ..scoring.prospr import prospr_scores
from ..scoring.topk import SegmentTopK
from ..scoring.data import (cycle_batches, input_shape_from, model_device, num_classes_of, take_samples, threads_for,
                            train_mode)
from ..sparsity import masks_from_scores, num_keep
from .base import InitPruner, MethodConfig, PruneContext, report_progress
from .registry import METHODS


class PaIConfig(MethodConfig):
    """Settings shared by the score-based PaI methods."""

    allocation: Literal["global", "uniform", "erk", "er"] = "global"
    rounds: int = 1
    rounds_schedule: Literal["exponential", "linear"] = "exponential"
    train_mode: bool = False
    invert: bool = False
    shuffle: bool = False
    reinitialize: bool = False
    seed: int | None = None  # for shuffle / reinitialize; None: the global RNG

    @model_validator(mode="after")
    def _positive_rounds(self):
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} is not allowed; allowed: an integer >= 1")
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
        # weights pruned earlier stay pruned (-inf ranks below every finite score)
        scores = {n: s.masked_fill(~self.masks[n], -torch.inf) for n, s in scores.items()}
        if cfg.allocation == "global" and next(iter(scores.values())).dtype == torch.float32:
            flat = torch.cat([s.reshape(-1) for s in scores.values()])
            keep = SegmentTopK([flat.numel()], flat.device)(flat, [num_keep(flat.numel(), sparsity)])
            new = dict(zip(scores, keep.split([s.numel() for s in scores.values()])))
            self.masks.update_({n: k.view_as(self.masks[n]) for n, k in new.items()})
        else:
            self.masks.update_(masks_from_scores(scores, sparsity, cfg.allocation))

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
    #: samples scored; None: ``samples_per_class x`` the model's output width (Synaptic-Flow: 10 x classes)
    num_samples: int | None = None
    samples_per_class: int = 10


def _scoring_samples(model, ctx: PruneContext, cfg: DataPaIConfig, what: str):
    it = iter(ctx.batches if ctx.batches is not None else ())
    first = next(it, None)
    if first is None:
        raise ConfigError(f"{what} needs data: pass batches in the PruneContext (ctx.batches)")
    n = cfg.num_samples
    if n is None:
        n = cfg.samples_per_class * num_classes_of(model, first[0].to(model_device(model)))
    return take_samples(itertools.chain([first], it), n, model_device(model), what)


@METHODS.register("snip", family="pai", when="init")
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
    temperature: float = 200.0
    eps: float = 1e-10
    #: the reference's two passes over the data instead of one pass holding every batch's graph
    two_pass: bool = False
    #: "fused": convolutions with plain-kernel double backward and eval BatchNorm folded (same product up
    #: to float rounding, ~25 % cheaper); "autograd": PyTorch's double backward, the reference's arithmetic
    second_order: Literal["fused", "autograd"] = "fused"


@METHODS.register("grasp", family="pai", when="init")
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
    rounds: int = 100
    input_shape: tuple[int, ...] | None = None  # None: one sample of ctx.batches
    dtype: Literal["float32", "float64"] = "float32"
    cpu_threads: int | None = None  # None: one per million weights (batch-1 rounds are too small to share)


@METHODS.register("synflow", family="pai", when="init")
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
        numels = scorer.numels
        select = SegmentTopK([keep.numel()], keep.device)
        for r in range(1, cfg.rounds + 1):
            s = scorer.flat_scores(keep)
            if r == 1:
                check_scores(s, self.name)
            if cfg.invert:
                s = s.neg_()
            sparsity = round_sparsity(target, r, cfg.rounds, cfg.rounds_schedule)
            if cfg.allocation == "global":
                keep = select(s, [num_keep(s.numel(), sparsity)], nonnegative=not cfg.invert, active=keep)
            else:
                s = s.masked_fill_(~keep, -torch.inf)
                parts = {n: v.view(m.shape) for (n, m), v in zip(self.masks.items(), s.split(numels))}
                keep = torch.cat([k.reshape(-1) for k in masks_from_scores(parts, sparsity, cfg.allocation).values()])
            report_progress(ctx, r, cfg.rounds)
        return keep.clone()  # the global path returns the selector's reused buffer


class IterSNIPConfig(PaIConfig):
    rounds: int = 60  # naver/force README, CIFAR: --num_steps 60
    batches_per_round: int = 1  # --num_batches 1 (CIFAR-10)
    train_mode: bool = True  # FORCE scores the network in its default (train) mode


@METHODS.register("iter_snip", family="pai", when="init")
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
    inner_steps: int = 3  # --inner-steps
    inner_lr: float = 0.1  # --inner-lr
    inner_momentum: float = 0.0  # --inner-momentum
    num_samples: int = 128  # --meta-batch-size: one batch, used for every inner step
    train_mode: bool = True  # the reference prunes a copy in train mode


@METHODS.register("prospr", family="pai", when="init")
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
