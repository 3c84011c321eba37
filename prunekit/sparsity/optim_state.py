"""What happens to optimizer state (momentum, Adam moments) at pruned and regrown positions.

The papers differ, so it is an explicit per-method setting:

* ``keep`` — leave the state as the optimizer has it (DPaI's and LAP's training loops: only weights are
  re-masked).
* ``mask`` — multiply momentum / Adam moments by the mask after every step, so pruned weights carry no
  stale momentum (GraNet ``Masking.apply_mask``; sparse_learning lineage).
* ``reset_regrown`` — keep the state between updates, and zero the state of weights that a growth step
  just revived (RigL: grown connections start at zero with zero optimizer state). Without growth (any
  method that never regrows) it is ``keep``.

:func:`enforce_optimizer_state_` (after every step) and :func:`reset_regrown_state_` (after a growth step)
are the whole policy; every method goes through them.
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
def enforce_optimizer_state_(optimizer: torch.optim.Optimizer | None, masks: MaskSet, policy: str) -> None:
    """The per-step part of ``policy``: under ``mask``, zero every per-weight buffer at pruned positions
    (one foreach call per buffer kind once the optimizer has created them all); else nothing."""
    if optimizer is None or policy != "mask":
        return
    state, params = optimizer.state, masks.params
    first = state.get(params[0])
    if not first:
        return
    for key in STATE_KEYS:
        if not isinstance(first.get(key), Tensor):
            continue
        bufs = [state.get(p, {}).get(key) for p in params]
        if all(isinstance(b, Tensor) and b.shape == p.shape for b, p in zip(bufs, params)):
            masks.mask_tensors_(bufs)
        else:  # partly created state: the generic path
            mask_optimizer_state_(optimizer, masks)
            return


@torch.no_grad()
def reset_regrown_state_(optimizer: torch.optim.Optimizer | None, masks: MaskSet, born: Mapping[str, Tensor],
                         policy: str) -> None:
    """The growth part of ``policy``: under ``reset_regrown``, zero the buffers of the weights a growth step
    just revived (``born[name]``: bool, weight-shaped), which kept accumulating while they were inactive."""
    if optimizer is None or policy != "reset_regrown":
        return
    for p, name in zip(masks.params, masks.names()):
        state = optimizer.state.get(p)
        if name not in born or not state:
            continue
        keep = None
        for key in STATE_KEYS:
            buf = state.get(key)
            if isinstance(buf, Tensor) and buf.shape == p.shape:
                keep = (~born[name]).to(buf.dtype) if keep is None else keep
                buf.mul_(keep)  # float multiplies: faster than masked_fill_ on the CPU


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
