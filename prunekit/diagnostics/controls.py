"""Sanity-check controls for pruning at initialization.

Frankle, Dziugaite, Roy, Carbin, "Pruning Neural Networks at Initialization: Why are We Missing the
Mark?", ICLR 2021 (and Su et al., "Sanity-Checking Pruning Methods: Random Tickets can Win the
Jackpot", NeurIPS 2020): a PaI method whose accuracy survives shuffling its mask within each layer,
reinitialising the weights, or inverting its scores has not learned *which* weights matter, only how
many per layer. Synaptic-Flow's ``prune_loop`` exposes the same three switches.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..sparsity import MaskSet


def shuffle_within_layers(masks: MaskSet, generator: torch.Generator | None = None) -> MaskSet:
    """Randomly permute every layer's mask in place: per-layer counts kept, positions random."""
    for name, m in masks.items():
        perm = torch.randperm(m.numel(), generator=generator).to(m.device)
        masks.set_(name, m.reshape(-1)[perm].view_as(m).clone())
    return masks


@torch.no_grad()
def reinitialize_weights(model: nn.Module, masks: MaskSet | None = None,
                         init: Callable[[nn.Module], None] | None = None,
                         generator: torch.Generator | None = None) -> nn.Module:
    """Draw new weights, keep the masks.

    With ``init`` (e.g. one of :mod:`prunekit.models.init`), call it on ``model`` under a forked RNG
    seeded from ``generator``. Without it, every prunable weight gets a random permutation of its own
    current values: a fresh draw from the layer's (empirical) initial distribution that needs no
    knowledge of the model's initialisation scheme. Masks are re-applied afterwards.
    """
    if init is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            init(model)
    else:
        if masks is None:
            raise ConfigError("reinitialize_weights without init needs the MaskSet of the prunable weights")
        for p in masks.params:
            perm = torch.randperm(p.numel(), generator=generator).to(p.device)
            p.copy_(p.reshape(-1)[perm].view_as(p))
    if masks is not None:
        masks.apply_()
    return model


def invert_scores(scores: Mapping[str, Tensor], mode: str = "negate") -> dict[str, Tensor]:
    """Scores whose top-k is the original's bottom-k.

    ``"negate"`` (default) reverses any ranking, signed scores (GraSP) included. ``"reciprocal"`` is
    Synaptic-Flow's ``Pruner.invert`` (``v / v**2``), a reversal only for positive scores.
    """
    if mode == "negate":
        return {n: -s for n, s in scores.items()}
    if mode == "reciprocal":
        return {n: s / s.pow(2) for n, s in scores.items()}
    raise ConfigError(f"invert mode={mode!r} is not allowed; allowed: negate, reciprocal")
