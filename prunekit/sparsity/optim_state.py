"""What happens to optimizer state (momentum, Adam moments) at pruned and regrown positions.

The papers differ, so it is an explicit per-method setting:

* ``keep`` — leave the state as the optimizer has it (DPaI's and LAP's training loops: only weights are
  re-masked).
* ``mask`` — multiply momentum / Adam moments by the mask after every step, so pruned weights carry no
  stale momentum (GraNet ``Masking.apply_mask``; sparse_learning lineage).
* ``reset_regrown`` — additionally zero the state of weights that a growth step just revived (RigL: grown
  connections start at zero with zero optimizer state).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..errors import ConfigError
from .masks import MaskSet

STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
POLICIES = ("keep", "mask", "reset_regrown")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ConfigError(f"optimizer_state={policy!r} is not allowed; allowed: {', '.join(POLICIES)}")
    return policy


def _state_buffers(optimizer: torch.optim.Optimizer, masks: MaskSet) -> list[tuple[Tensor, Tensor]]:
    pairs = []
    for p, m in zip(masks.params, masks.values()):
        state = optimizer.state.get(p)
        if not state:
            continue
        for key in STATE_KEYS:
            buf = state.get(key)
            if isinstance(buf, Tensor) and buf.shape == m.shape:
                pairs.append((buf, m))
    return pairs


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, masks: MaskSet) -> None:
    """Zero every per-weight optimizer buffer at masked positions (one foreach call)."""
    pairs = _state_buffers(optimizer, masks)
    if pairs:
        bufs = [b for b, _ in pairs]
        torch._foreach_mul_(bufs, [m.to(b.dtype) for b, m in pairs])


@torch.no_grad()
def reset_optimizer_state_(optimizer: torch.optim.Optimizer, masks: MaskSet, positions: Mapping[str, Tensor]) -> None:
    """Zero optimizer buffers at ``positions[name]`` (bool, weight-shaped), e.g. just-regrown weights."""
    for p, name in zip(masks.params, masks.names()):
        if name not in positions:
            continue
        state = optimizer.state.get(p)
        if not state:
            continue
        for key in STATE_KEYS:
            buf = state.get(key)
            if isinstance(buf, Tensor) and buf.shape == p.shape:
                buf.masked_fill_(positions[name], 0)
