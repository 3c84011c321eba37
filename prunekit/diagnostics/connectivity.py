"""Connectivity of a sparse network: effective sparsity, paths, nodes, kernels and layer collapse.

* Effective sparsity — Vysogorets & Kempe, "Connectivity Matters: Neural Network Pruning Through the
  Lens of Effective Sparsity", JMLR 2023: a kept weight that lies on no input->output path cannot
  influence the output and counts as removed.
* Paths, effective nodes and kernels — Pham et al., NPB (NeurIPS 2023) and Xiang et al., DPaI
  (ICLR 2025): a node (output unit / channel) or a kernel (an (out, in) pair of a conv; a single weight
  of a Linear) is effective when it holds an effective weight.
* Layer collapse — Tanaka et al., SynFlow (NeurIPS 2020): a layer left with no effective weight.

Connectivity is exact: a forward/backward pass with 0/1 signals (see
:class:`prunekit.scoring.PathCounter`), max-pooling treated as connecting its whole window. The log of
the number of paths is computed in float64 without rescaling (exact while finite), falling back to
DPaI's rescaled count (exact for chains) when it overflows.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import LayerCollapseError
from ..scoring.attention import attention_projections, score_only
from ..scoring.data import threads_for
from ..scoring.paths import FlatLayout, PathCounter, canonical, transposed_weights
from ..scoring.tokens import model_probe
from ..sparsity import MaskSet


@dataclass
class Connectivity:
    """What :func:`connectivity` measures; ``layers`` maps each prunable weight to its counts."""

    numel: int
    kept: int
    effective: int
    log_paths: float
    effective_nodes: int
    effective_kernels: int
    layers: dict[str, dict] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.numel

    @property
    def effective_sparsity(self) -> float:
        return 1.0 - self.effective / self.numel

    @property
    def collapsed(self) -> list[str]:
        """Layers with no effective weight."""
        return [n for n, r in self.layers.items() if r["effective"] == 0]

    @property
    def disconnected(self) -> bool:
        """No input->output path at all."""
        return self.effective == 0


def _weights(masks: MaskSet, dtype: torch.dtype) -> list[Tensor]:
    return [m.to(dtype).requires_grad_(True) for m in masks.values()]


def effective_masks(model: nn.Module, masks: MaskSet, input_shape: Sequence[int]) -> dict[str, Tensor]:
    """``{name: bool}``: kept weights that lie on at least one input->output path. An attention's query and
    key projections only weight the softmax (no path runs through them, :mod:`prunekit.scoring.attention`):
    their kept weights count as effective when their input is reached, since they act on the output."""
    with PathCounter(model, masks.names(), input_shape) as pc, threads_for(masks.params[0].device, masks.numel()):
        w = _weights(masks, torch.float32)
        grads = torch.autograd.grad(pc.reach(w), w, allow_unused=True)
    gates = set(score_only(attention_projections(model, model_probe(model, input_shape))))
    return {n: m.clone() if n in gates else (g > 0) & m if g is not None else torch.zeros_like(m)
            for (n, m), g in zip(masks.items(), grads)}


def log_paths(model: nn.Module, masks: MaskSet, input_shape: Sequence[int]) -> float:
    """Natural log of the number of input->output paths (``-inf`` when disconnected)."""
    with PathCounter(model, masks.names(), input_shape, dtype=torch.float64) as pc, torch.no_grad(), \
            threads_for(masks.params[0].device, masks.numel()):
        w = [m.to(torch.float64) for m in masks.values()]
        value = pc.log_paths_unscaled(w)
        if not torch.isfinite(value) and not (value < 0):
            value = pc.log_paths(w)
    return float(value)


def connectivity(model: nn.Module, masks: MaskSet, input_shape: Sequence[int]) -> Connectivity:
    """Effective sparsity, log paths, effective nodes/kernels, per layer and in total."""
    with threads_for(masks.params[0].device, masks.numel()):
        return _connectivity(model, masks, input_shape)


def _connectivity(model: nn.Module, masks: MaskSet, input_shape: Sequence[int]) -> Connectivity:
    eff = effective_masks(model, masks, input_shape)
    transposed = transposed_weights(model, masks.names())  # nodes are output units: count on [out, in]
    eff_units = canonical(list(eff.values()), transposed)
    layout = FlatLayout([e.shape for e in eff_units], device=next(iter(eff.values())).device)
    flat = torch.cat([e.reshape(-1) for e in eff_units])
    nodes, kernels, _ = layout.unit_alive(flat)
    per_nodes = layout.per_layer(nodes, "node")
    per_kernels = layout.per_layer(kernels, "kernel")
    layers = {}
    for i, ((n, m), tr) in enumerate(zip(masks.items(), transposed)):
        kernel = 1 if m.dim() <= 2 else m[0, 0].numel()
        layers[n] = {"numel": m.numel(), "kept": int(m.sum()), "effective": int(eff[n].sum()),
                     "nodes": per_nodes[i], "nodes_total": m.shape[1 if tr else 0],
                     "kernels": per_kernels[i], "kernels_total": m.numel() // kernel}
    return Connectivity(
        numel=masks.numel(), kept=masks.nnz(), effective=int(flat.sum()),
        log_paths=log_paths(model, masks, input_shape),
        effective_nodes=int(nodes.sum()), effective_kernels=int(kernels.sum()), layers=layers,
    )


def check_layer_collapse(model: nn.Module, masks: MaskSet, input_shape: Sequence[int],
                         raise_error: bool | str = False) -> list[str]:
    """Names of collapsed layers (no effective weight). Warns when there are any; raises
    :class:`~prunekit.errors.LayerCollapseError` instead with ``raise_error=True``, or with
    ``raise_error="disconnected"`` only when no input->output path is left (a residual network whose
    shortcut branch is cut still trains)."""
    eff = effective_masks(model, masks, input_shape)
    collapsed = [n for n, e in eff.items() if not bool(e.any())]
    if collapsed:
        total = all(not bool(e.any()) for e in eff.values())
        what = "the network has no input->output path" if total else "a branch is cut"
        msg = (f"layer collapse: {len(collapsed)} of {len(eff)} layers keep no effective weight ({what}): "
               + ", ".join(collapsed[:5]) + (" ..." if len(collapsed) > 5 else ""))
        if raise_error is True or (raise_error == "disconnected" and total):
            raise LayerCollapseError(msg + "; allowed: a lower sparsity or another allocation")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return collapsed


def summary(c: Connectivity) -> str:
    """A plain-text table of :func:`connectivity`'s result."""
    rows = [f"{'layer':<36} {'kept':>9} {'effective':>9} {'nodes':>11} {'kernels':>13}"]
    for n, r in c.layers.items():
        rows.append(f"{n:<36} {r['kept']:>9} {r['effective']:>9} {r['nodes']:>5}/{r['nodes_total']:<5} "
                    f"{r['kernels']:>6}/{r['kernels_total']:<6}")
    paths = "-inf" if math.isinf(c.log_paths) else f"{c.log_paths:.3f}"
    rows.append(f"sparsity {c.sparsity:.4f}  effective sparsity {c.effective_sparsity:.4f}  log paths {paths}  "
                f"effective nodes {c.effective_nodes}  kernels {c.effective_kernels}")
    return "\n".join(rows)
