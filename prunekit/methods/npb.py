"""NPB: Pham, Ta, Liu, Xiang, Le, Wen, Tran-Thanh, "Towards Data-Agnostic Pruning At Initialization: What
Makes a Good Sparse Mask?", NeurIPS 2023 (code ``pvh1602/NPB``, ``Pruners/pruners.py:
Optimization_Pruner.prune`` and ``Pruners/utils.py``).

Data- and weight-free (the weights only order positions inside a kernel with
``kernel_positions="magnitude"``). Layers are visited in execution order; each gets its per-layer budget
(ERK by default, the reference's ``--init_mode ERK``) and solves the node-path balancing program of
:mod:`prunekit.scoring.npb` on the path counts arriving at its inputs through the layers already chosen
(all-ones input, masks as weights, normalisation and activations as the identity, in float64). The
reference's per-layer settings are kept:

* first conv: at most ``k*k`` weights per kernel, never chunked;
* projection shortcuts (name contains ``shortcut`` or ``downsample``): ``beta = shortcut_beta`` (0.001, the
  function default the reference leaves in place), at most ``k*k`` per kernel; after each one ``max_p``
  drops by ``max_p_step`` (2) while it is above ``max_p_floor`` (5);
* other convs: at most ``max_p`` per kernel (raised to ``ceil(n / (C_in C_out))`` when the budget needs
  it; capped at ``k*k``), ``min_param_to_node = min_nodes`` (clamped to that same bound), optional node
  constraint; solved in chunks of ``chunk_size`` output channels when ``C_out * C_in > chunk_above``;
* Linear: ``beta = 0``, one weight per kernel, chunks of ``linear_chunk_size`` rows when
  ``out * in > linear_chunk_above``.

Then ``fine_tune`` moves each conv layer's weights that lie on no input->output path to positions that
do (``fine_tune_mask``). Every layer keeps exactly its budget.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ..errors import MaskError
from ..scoring.data import input_shape_from, threads_for
from ..scoring.npb import (LayerProgram, counts_to_mask, input_paths, objective, position_ranks,
                           reallocate_ineffective, solve_greedy, solve_milp)
from ..scoring.paths import PathCounter
from ..scoring.phew import ChainLayer, trace_layers
from ..sparsity import allocate, num_keep
from ..sparsity.targets import SHORTCUT_WORDS
from .base import ALLOCATION_HELP, Allocation, PruneContext
from .data_free import DataFreeConfig, DataFreePruner, KeepsLayersDense, untraceable_attention_weights
from .registry import METHODS


class NPBConfig(DataFreeConfig):
    """Defaults are the reference's ResNet-20 / CIFAR-10 command (``scripts/run.sh``): alpha 0.01, beta 1,
    max_p 9, ERK, chunk_size 32 (its argparse defaults: alpha 0.99, beta 0.001, max_p 5)."""

    alpha: float = Field(0.01, description="weight of the node term against the path term in alpha A + "
                         "(1 - alpha) B + beta R (--alpha)")
    beta: float = Field(1.0, description="weight of the kernel term R of convolutions (--beta)")
    max_p: int = Field(9, description="most weights per kernel of the convolutions other than the first and the "
                       "shortcuts, raised when the budget needs it (--max_p)")
    min_nodes: int = Field(1, description="weights a node needs to count as kept, min_param_to_node (--min_n)")
    node_constraint: bool = Field(False, description="bound each node's weights as the reference's "
                                  "--is_node_constraint (solver='milp')")
    allocations = ("erk", "uniform", "er", "custom")

    allocation: Allocation = Field("erk", description=ALLOCATION_HELP + " (--init_mode; the reference: erk)")
    chunk_size: int = Field(32, description="output channels per solve of a convolution above chunk_above")
    chunk_above: int = Field(128 * 128, description="C_out x C_in above which a convolution is solved in chunks "
                             "(the reference also chunks above 64 x 32 for its CIFAR ResNets)")
    linear_chunk_size: int = Field(10, description="rows per solve of a Linear layer above linear_chunk_above")
    linear_chunk_above: int = Field(512 * 10, description="out x in above which a Linear layer is solved in chunks")
    shortcut_beta: float = Field(0.001, description="beta of projection shortcuts (the reference's function "
                                 "default)")
    max_p_step: int = Field(2, description="how much max_p drops after each projection shortcut")
    max_p_floor: int = Field(5, description="max_p drops after a shortcut only while above this")
    kernel_positions: Literal["random", "magnitude"] = Field(
        "random", description="which positions of a kernel are kept: at random (the reference) or the largest |w|")
    fine_tune: bool = Field(True, description="move each conv layer's weights on no input->output path to "
                            "positions that are")
    solver: Literal["greedy", "milp"] = Field(
        "greedy", description="the closed-form optimum (min_nodes <= 1, no node constraint) or SciPy's HiGHS MILP")
    tie_break: Literal["random", "index"] = Field(
        "random", description="order of equal-valued input units (every pixel of an MLP's input layer): seeded "
        "random per chunk, or lowest index first (on MNIST that feeds the first layer only the blank top rows)")
    milp_time_limit: float | None = Field(None, description="seconds per solve (solver='milp'); None: no limit")

    @model_validator(mode="after")
    def _ranges(self):
        if not 0.0 <= self.alpha <= 1.0 or self.beta < 0 or self.shortcut_beta < 0:
            raise ValueError("allowed: alpha in [0, 1], beta >= 0, shortcut_beta >= 0")
        if min(self.max_p, self.min_nodes, self.chunk_size, self.linear_chunk_size) < 1 or self.max_p_step < 0:
            raise ValueError("allowed: max_p, min_nodes, chunk_size, linear_chunk_size >= 1; max_p_step >= 0")
        if self.solver == "greedy" and (self.min_nodes > 1 or self.node_constraint):
            raise ValueError("min_nodes > 1 and node_constraint need solver='milp'; allowed with 'greedy': "
                             "min_nodes=1, node_constraint=false")
        return self


def chunk_budgets(keep: int, widths: list[int], per_unit: int) -> list[int]:
    """Split a layer's ``keep`` over chunks of ``widths`` output units in proportion to their size
    (cumulative rounding, exact total)."""
    total = sum(widths) * per_unit
    cum, out, prev = 0, [], 0
    for w in widths:
        cum += w * per_unit
        cur = keep * cum // total
        out.append(cur - prev)
        prev = cur
    return out


@METHODS.register("npb", family="pai")
class NPB(KeepsLayersDense, DataFreePruner):
    """NPB masks at initialization (layer-by-layer node-path balancing); see the module docstring.
    After ``prune()``, ``layers`` holds per layer its role, budget, ``max_p``, chunks and objective."""

    Config = NPBConfig
    name = "npb"
    config: NPBConfig
    layers: tuple[dict, ...] = ()

    def prune(self, ctx: PruneContext | None = None):
        cfg = self.config
        ctx = ctx or PruneContext()
        shape = input_shape_from(cfg.input_shape, ctx.batches, self.name)
        self.keep_dense(untraceable_attention_weights(self.model))
        chain = [c for c in trace_layers(self.model, shape) if c.name in self.masks]
        missing = sorted(set(self.masks.names()) - {c.name for c in chain})
        if missing:
            raise MaskError(f"npb: {missing[0]!r} is not a Conv/Linear weight used in the forward pass")
        budgets = allocate(cfg.allocation, {n: tuple(m.shape) for n, m in self.masks.items()}, self.target_sparsity())
        gen = self.generator()
        with threads_for(self.masks.params[0].device, self.masks.numel()):
            masks = self._solve(chain, shape, budgets, gen)
            if cfg.fine_tune:
                masks = self._fine_tune(chain, shape, masks)
        self.masks.update_(masks)
        self.enforce()
        return self.masks

    # --- layer by layer ------------------------------------------------------------------------
    def _solve(self, chain: list[ChainLayer], shape, budgets: dict[str, float], gen: torch.Generator) -> dict[str, Tensor]:
        cfg = self.config
        names = self.masks.names()
        device = self.masks.params[0].device
        params = dict(self.model.named_parameters())
        current = {n: torch.ones(m.shape, dtype=torch.float64, device=device) for n, m in self.masks.items()}
        max_p = cfg.max_p
        rows: list[dict] = []
        with PathCounter(self.model, names, shape, dtype=torch.float64) as pc, torch.no_grad():
            pc.check_dense(self.name)
            for i, layer in enumerate(chain):
                paths = input_paths(pc, self.model, layer, [current[n] for n in names])
                role = self._role(layer, i)
                keep = num_keep(layer.numel, budgets[layer.name])
                counts, info = self._solve_groups(layer, role, paths, keep, max_p, budgets[layer.name], gen)
                weight = params[layer.name].t() if layer.transposed else params[layer.name]  # its [out, in] form
                mask = counts_to_mask(counts, tuple(weight.shape[2:]), position_ranks(weight, cfg.kernel_positions, gen))
                mask = mask.t() if layer.transposed else mask
                current[layer.name] = mask.to(device=device, dtype=torch.float64)
                rows.append({"layer": layer.name, "role": role, **info})
                if role == "shortcut" and max_p > cfg.max_p_floor:
                    max_p -= cfg.max_p_step
        self.layers = tuple(rows)
        return {n: c > 0 for n, c in current.items()}

    @staticmethod
    def _role(layer: ChainLayer, index: int) -> str:
        if not layer.conv:
            return "linear"
        if index == 0:
            return "first"
        return "shortcut" if any(w in layer.name for w in SHORTCUT_WORDS) else "conv"

    def _solve_groups(self, layer: ChainLayer, role: str, paths: Tensor, keep: int, max_p: int,
                      sparsity: float, gen: torch.Generator) -> tuple[Tensor, dict]:
        """:meth:`_solve_layer`; a grouped conv is solved group by group, like NPB's chunks of output
        channels (a budget share in proportion to size), each chunk reading only its group's inputs."""
        if layer.groups == 1:
            return self._solve_layer(layer, role, paths, keep, max_p, sparsity, gen)
        g, per_in, per_out = layer.groups, layer.in_units // layer.groups, layer.out_units // layer.groups
        sub = replace(layer, in_units=per_in, out_units=per_out, groups=1)
        parts, infos = [], []
        for i, n in enumerate(chunk_budgets(keep, [per_out] * g, per_in * layer.kernel)):
            counts, info = self._solve_layer(sub, role, paths[i * per_in:(i + 1) * per_in], n, max_p, sparsity, gen)
            parts.append(counts)
            infos.append(info)
        info = {"keep": keep, "max_p": max(i["max_p"] for i in infos), "chunks": sum(i["chunks"] for i in infos),
                "objective": sum(i["objective"] for i in infos) / g, "groups": g}
        return torch.cat(parts, dim=1), info

    def _solve_layer(self, layer: ChainLayer, role: str, paths: Tensor, keep: int, max_p: int,
                     sparsity: float, gen: torch.Generator) -> tuple[Tensor, dict]:
        cfg = self.config
        kk = layer.kernel
        beta = {"linear": 0.0, "shortcut": cfg.shortcut_beta}.get(role, cfg.beta)
        p = {"linear": 1, "first": kk, "shortcut": kk}.get(role, max_p)
        m = cfg.min_nodes if role == "conv" else 1
        constrained = cfg.node_constraint and role in ("conv", "shortcut")
        if role == "linear":
            width = cfg.linear_chunk_size if layer.out_units * layer.in_units > cfg.linear_chunk_above else layer.out_units
        elif role != "first" and layer.out_units * layer.in_units > cfg.chunk_above:
            width = cfg.chunk_size
        else:
            width = layer.out_units
        widths = [min(width, layer.out_units - s) for s in range(0, layer.out_units, width)]
        parts, objectives, p_used = [], [], []
        for cols, n in zip(widths, chunk_budgets(keep, widths, layer.in_units * kk)):
            least = math.ceil(n / (layer.in_units * cols))  # weights per kernel the budget needs at least
            p_c = min(max(p, least), kk)
            # each chunk its own order: chunks are solved apart, so one order would give every chunk the same rows
            order = torch.randperm(layer.in_units, generator=gen) if cfg.tie_break == "random" else None
            prog = LayerProgram(paths if order is None else paths[order], cols, n, p_c, cfg.alpha, beta, min(m, least),
                                (int(layer.in_units * p_c ** 2 * (1 - sparsity)),
                                 int(cols * p_c ** 2 * (1 - sparsity))) if constrained else None)
            counts = solve_greedy(prog) if cfg.solver == "greedy" else solve_milp(prog, cfg.milp_time_limit)
            objectives.append(objective(counts, prog))
            if order is not None:  # rows back to their units
                counts = torch.empty_like(counts).index_copy_(0, order, counts)
            parts.append(counts)
            p_used.append(p_c)
        info = {"keep": keep, "max_p": max(p_used), "chunks": len(widths), "objective": sum(objectives) / len(widths)}
        return torch.cat(parts, dim=1), info

    # --- fine-tuning ---------------------------------------------------------------------------
    def _fine_tune(self, chain: list[ChainLayer], shape, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        names = self.masks.names()
        with PathCounter(self.model, names, shape) as pc:
            for layer in chain:
                if not layer.conv:
                    continue
                weights = [masks[n].float().requires_grad_(n == layer.name) for n in names]
                target = weights[names.index(layer.name)]
                (grad,) = torch.autograd.grad(pc.reach(weights), [target])
                by_column = self._role(layer, -1) == "shortcut"
                mask = masks[layer.name]
                masks[layer.name] = reallocate_ineffective(mask.cpu(), (grad > 0).cpu(), by_column).to(mask.device)
        return masks
