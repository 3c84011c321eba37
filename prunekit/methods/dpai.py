"""DPaI: Xiang, Nguyen-Tri, Nguyen, Pham, Than, Tran-Thanh, Wen, "Differentiable Pruning at
Initialization with Node-Path Balance Principle", ICLR 2025 (code ``QuanNguyen-Tri/DPaI``, ``npb.py``,
``main.py``; methods.md §1a).

A data- and weight-free mask search. Every Conv/Linear weight gets a score ``s ~ N(0, 1)``; its mask is
the per-layer top-k of ``|s|`` (ERK budgets) with a straight-through gradient. One step runs the
path-count forward (:class:`prunekit.scoring.PathCounter`: all-ones input, masks as weights, BN/LN/
activations as identity, per-layer rescaling by the input maximum), back-propagates
``log P = log(sum(out)) + sum_l log(max_l)`` to the masks, marks the *effective* weights
(``|dlogP/dmask| * mask > 0``), their nodes and kernels, and writes the surrogate gradient

    s.grad = -[(1 - alpha) g_path + alpha ((1 - beta) g_node + beta g_kernel)]

with ``g_node = g_path * (1 - node_alive)`` and ``g_kernel = g_path * (1 - kernel_alive)`` (Linear: the
weight itself is the kernel), followed by ``Adam.step()`` at a constant learning rate (the reference's
LR scheduler is never stepped). After the last step the mask is the top-k of ``|s|``.

The whole model is handled as one flat score vector, so a step is a forward/backward of the path-count
network, one top-k per layer and a dozen whole-model tensor operations; nothing synchronises with the
host except the periodic no-effective-node check.

**Attention** (methods.md §1b): the reference prunes every ``nn.Conv2d``/``nn.Linear`` of torchvision's
ViT; the attention's q/k/v live in ``nn.MultiheadAttention``'s packed ``in_proj_weight``, a raw Parameter,
so the reference neither prunes nor path-counts them (and ``out_proj``, whose forward torch never calls,
keeps its random initial top-``|s|`` mask). prunekit's ViTs write q/k/v as Linear layers, so
``attention="reference"`` (default) keeps them dense the same way: they leave the mask set, the ERK budget
is spread over the other layers, and ``report()`` lists them with the reason. ``attention="paths"``
keeps only the query and key projections dense (their output only weights the softmax: no path, no
gradient, ever) and searches the value projections. See ``docs/pai.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..errors import LayerCollapseError
from ..scoring.data import input_shape_from, threads_for
from ..scoring.paths import FlatLayout, PathCounter, canonical, transposed_weights
from ..sparsity import FlatSelector, keep_counts
from .base import ALLOCATION_HELP, Allocation, InitPruner, MethodConfig, PruneContext
from .data_free import KeepsLayersDense, attention_kept_dense
from .registry import METHODS


class DPaIConfig(MethodConfig):
    """Defaults are the paper's ``experiments/run.sh``: alpha 0.99, beta 0.5, lr 0.005, 3000 steps, ERK.

    The reference's ``--ablation`` switches: ``random`` is ``optimize=False`` (a random ERK mask),
    ``erk`` (which *disables* ERK) is ``allocation="uniform"``, ``layer-wise`` (which selects globally)
    is ``allocation="global"``.
    """

    alpha: float = Field(0.99, description="weight of the node/kernel terms against log paths in J = (1 - alpha) "
                         "log P + alpha ((1 - beta) log N + beta log K)")
    beta: float = Field(0.5, description="weight of effective kernels against effective nodes")
    lr: float = Field(0.005, description="Adam learning rate of the scores (constant, as the reference)")
    steps: int = Field(3000, description="search steps (one path-count forward and backward each)")
    allocations = ("erk", "uniform", "global", "custom")

    allocation: Allocation = Field("erk", description=ALLOCATION_HELP + " (the reference: erk)")
    optimize: bool = Field(True, description="False: no search, the random initial scores' mask (the "
                           "reference's 'random' ablation)")
    seed: int | None = Field(None, description="score initialisation; None: drawn from the global RNG")
    input_shape: tuple[int, ...] | None = Field(None, description="shape of one input of the path count, e.g. "
                                                "[3, 32, 32]; None: one sample of ctx.batches")
    attention: Literal["reference", "paths"] = Field(
        "reference", description="attention q/k/v projections kept dense, as the reference's in_proj_weight; "
        "'paths': only q/k dense, the values searched")
    check_every: int = Field(100, description="search steps between host-side checks for 'no effective node "
                             "left'")
    cpu_threads: int | None = Field(None, description="CPU threads of the search; None: one per million weights "
                                    "(batch-1 work is too small to share)")

    @model_validator(mode="after")
    def _ranges(self):
        for field in ("alpha", "beta"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"{field}={getattr(self, field)} is out of range; allowed: a float in [0, 1]")
        if self.steps < 0 or self.check_every < 1 or not self.lr > 0:
            raise ValueError("allowed: steps >= 0, check_every >= 1, lr > 0")
        return self


@dataclass
class SearchResult:
    """Final masks (flat bool, layer order) and the per-step trajectory: a ``(steps + 1, 4)`` tensor of
    ``log P``, effective nodes, effective kernels, effective params (last row: the final mask)."""

    keep: Tensor
    history: Tensor
    layout: FlatLayout  # over the [out, in] form of each weight
    transposed: tuple[bool, ...] = ()  # weights stored [in, out] (HF Conv1D)
    alpha: float = 0.99
    beta: float = 0.5

    @property
    def objective(self) -> Tensor:
        """Per step the objective the search ascends (and the reference logs):
        ``J = (1 - alpha) log P + alpha ((1 - beta) log N + beta log K)``, N and K the effective nodes and
        kernels."""
        log_p, nodes, kernels = self.history[:, 0], self.history[:, 1], self.history[:, 2]
        return (1 - self.alpha) * log_p + self.alpha * ((1 - self.beta) * nodes.log() + self.beta * kernels.log())

    def rows(self) -> list[dict[str, float]]:
        """The search, one dict per step: objective, log P, effective nodes, kernels and params."""
        keys = ("log_paths", "effective_nodes", "effective_kernels", "effective_params")
        return [{"step": i, "objective": float(j), **dict(zip(keys, row))}
                for i, (j, row) in enumerate(zip(self.objective.tolist(), self.history.tolist()))]

    def masks(self) -> list[Tensor]:
        """Per-layer masks in the parameters' own layout."""
        views = self.layout.views(self.keep)
        return canonical(views, self.transposed) if self.transposed else views

    @property
    def final(self) -> dict[str, float]:
        log_p, nodes, kernels, params = self.history[-1].tolist()
        return {"log_paths": log_p, "effective_nodes": nodes, "effective_kernels": kernels,
                "effective_params": params, "objective": float(self.objective[-1])}


def initial_scores(numels: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """Scores ``N(0, 1)`` drawn layer by layer in layer order (as ``nn.init.normal_`` per module)."""
    return torch.cat([torch.randn(n, generator=generator) for n in numels]).to(device)


def score_optimizer(params: Sequence[Tensor], lr: float) -> torch.optim.Adam:
    """Adam with default betas at a constant ``lr`` (the reference never steps its LR scheduler); the fused
    kernel where the installed torch has one for the device: one pass over the scores instead of ten."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def dpai_search(model: nn.Module, names: Sequence[str], zeros: Sequence[int] | int, input_shape: Sequence[int],
                scores: Tensor, alpha: float = 0.99, beta: float = 0.5, lr: float = 0.005, steps: int = 3000,
                check_every: int = 100, threads: int | None = None, progress=None) -> SearchResult:
    """Run the DPaI search from ``scores`` (flat, layer order of ``names``) and return the final mask.

    ``zeros``: weights removed per layer (``int(s_l * numel_l)``) or, an int, in total (global top-k).
    Raises :class:`~prunekit.errors.LayerCollapseError` when a step finds no effective node. ``threads``:
    CPU intra-op threads during the search (see :func:`prunekit.scoring.data.threads_for`).
    """
    with threads_for(scores.device, scores.numel(), threads):
        return _search(model, names, zeros, input_shape, scores, alpha, beta, lr, steps, check_every, progress)


def _search(model, names, zeros, input_shape, scores, alpha, beta, lr, steps, check_every, progress) -> SearchResult:
    params = dict(model.named_parameters())
    transposed = transposed_weights(model, names)
    layout = FlatLayout([p.shape for p in canonical([params[n] for n in names], transposed)], device=scores.device)
    shapes = dict(zip(names, layout.shapes))
    budget = layout.total - zeros if isinstance(zeros, int) else {n: k - z for n, k, z in zip(names, layout.numels, zeros)}
    selector = FlatSelector.for_counts(shapes, budget, scores.device)
    keeps = selector.counts()

    def select(s: Tensor) -> Tensor:
        return selector(s.detach().abs(), keeps, nonnegative=True)

    s = scores.detach().clone().requires_grad_(True)
    opt = score_optimizer([s], lr)
    rows: list[Tensor] = []
    fewest_nodes = None
    hard = torch.empty(layout.total, device=scores.device, requires_grad=True)
    with PathCounter(model, names, input_shape) as counter:
        counter.check_dense("dpai")
        for step in range(steps + 1):
            keep = select(s)
            with torch.no_grad():
                hard.copy_(keep)
            log_p = counter.log_paths(canonical(layout.views(hard), transposed))
            (g,) = torch.autograd.grad(log_p, hard)
            g_path = g.mul_(s.detach().sign())  # straight-through: d|s|/ds = sign(s)
            effective = (g_path.abs() > 0).logical_and_(keep)  # NaN (no path at all) counts as not effective
            node_alive, kernel_alive, n_params = layout.unit_alive(effective)
            n_nodes = node_alive.sum()
            rows.append(torch.stack([log_p.detach(), n_nodes.float(), kernel_alive.sum().float(), n_params.float()]))
            fewest_nodes = n_nodes if fewest_nodes is None else torch.minimum(fewest_nodes, n_nodes)
            if step == 0 or step % check_every == 0 or step == steps:
                if int(fewest_nodes) < 1:  # host sync, every check_every steps only
                    raise LayerCollapseError(
                        f"dpai: no effective node left by step {step}: the mask has no input->output path "
                        f"(sparsity too high for this model, or a layer budget of zero)")
                if progress is not None:
                    progress(step, steps)
            if step == steps:
                break
            g_node = g_path * layout.broadcast((~node_alive).to(g.dtype), "node")
            g_kernel = g_path * layout.broadcast((~kernel_alive).to(g.dtype), "kernel")
            s.grad = -((1 - alpha) * g_path + alpha * ((1 - beta) * g_node + beta * g_kernel))
            opt.step()
    return SearchResult(keep=select(s).clone(), history=torch.stack(rows).cpu(), layout=layout,
                        transposed=tuple(transposed), alpha=alpha, beta=beta)


@METHODS.register("dpai", family="pai")
class DPaI(KeepsLayersDense, InitPruner):
    """DPaI mask search at initialization (no data, no weights); see the module docstring."""

    Config = DPaIConfig
    name = "dpai"
    config: DPaIConfig

    def layer_zeros(self) -> list[int] | int:
        """Weights removed per layer (ERK or uniform budgets) or in total (``global``)."""
        shapes = {n: tuple(m.shape) for n, m in self.masks.items()}
        keep = keep_counts(shapes, self.target_sparsity(), self.config.allocation)
        if isinstance(keep, int):
            return self.masks.numel() - keep
        return [m.numel() - keep[n] for n, m in self.masks.items()]

    def prune(self, ctx: PruneContext | None = None):
        cfg = self.config
        ctx = ctx or PruneContext()
        gen = self.generator()
        shape = input_shape_from(cfg.input_shape, ctx.batches, self.name)
        self.keep_dense(attention_kept_dense(self.model, shape, values=cfg.attention == "reference"))
        device = self.masks.params[0].device
        scores = initial_scores([m.numel() for m in self.masks.values()], gen, device)
        steps = cfg.steps if cfg.optimize else 0
        result = dpai_search(self.model, self.masks.names(), self.layer_zeros(), shape, scores, cfg.alpha,
                             cfg.beta, cfg.lr, steps, cfg.check_every, cfg.cpu_threads, ctx.progress)
        self.masks.update_(dict(zip(self.masks.names(), result.masks())))
        self.search = result
        self.enforce()
        return self.masks

    def search_history(self) -> list[dict[str, float]]:
        return self.search.rows() if getattr(self, "search", None) is not None else []
