"""Interop with ``torch.nn.utils.prune``: its ``weight_orig`` + ``weight_mask`` state to and from masks.

``torch.nn.utils.prune`` re-parametrises a pruned weight as a parameter ``<name>_orig`` and a buffer
``<name>_mask`` (``weight = weight_orig * weight_mask``, recomputed by a forward pre-hook). prunekit
keeps masks outside the model (a :class:`~prunekit.sparsity.MaskSet` keyed by parameter name); these
functions move masks between the two, on live modules and on state dicts.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from ..errors import MaskError
from ..sparsity import MaskSet

ORIG, MASK = "_orig", "_mask"


def _split(name: str) -> tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def to_torch_prune(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Re-parametrise ``model`` in place with ``prune.custom_from_mask`` for every mask; returns it."""
    for name, mask in masks.items():
        module_name, attr = _split(name)
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise MaskError(f"mask {name!r} names no module of {type(model).__name__}") from None
        prune.custom_from_mask(module, attr, mask.to(torch.bool))
    return model


def from_torch_prune(model: nn.Module, remove: bool = True) -> MaskSet:
    """The masks of every ``torch.nn.utils.prune`` re-parametrisation in ``model``; with ``remove``
    the pruning is made permanent (``prune.remove``) so the returned MaskSet binds to plain weights."""
    found: dict[str, Tensor] = {}
    for module_name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if not isinstance(hook, prune.BasePruningMethod):
                continue
            names = [h._tensor_name for h in hook._pruning_methods] if isinstance(hook, prune.PruningContainer) \
                else [hook._tensor_name]
            for attr in dict.fromkeys(names):
                found[f"{module_name}.{attr}" if module_name else attr] = getattr(module, attr + MASK).detach().to(torch.bool)
                if remove:
                    prune.remove(module, attr)
    if not found:
        raise MaskError(f"{type(model).__name__} has no torch.nn.utils.prune re-parametrisation")
    masks = MaskSet({n: m.clone() for n, m in found.items()})
    return masks.bind(model) if remove else masks


def state_from_torch_prune(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(plain state dict, masks)`` from a state dict saved by a model pruned with
    ``torch.nn.utils.prune``: ``x.weight = x.weight_orig * x.weight_mask``."""
    plain: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(MASK) and key[: -len(MASK)] + ORIG in state:
            continue
        if key.endswith(ORIG) and key[: -len(ORIG)] + MASK in state:
            base = key[: -len(ORIG)]
            mask = state[base + MASK].to(torch.bool)
            plain[base] = value * mask.to(value.dtype)
            masks[base] = mask
        else:
            plain[key] = value
    return plain, masks


def state_to_torch_prune(state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict in ``torch.nn.utils.prune`` layout: each masked ``x.weight`` becomes
    ``x.weight_orig`` (the stored values) and ``x.weight_mask`` (float, as ``prune`` stores it)."""
    out: dict[str, Tensor] = {}
    missing = [n for n in masks if n not in state]
    if missing:
        raise MaskError(f"mask {missing[0]!r} names no entry of the state dict")
    for key, value in state.items():
        if key in masks:
            out[key + ORIG] = value
            out[key + MASK] = masks[key].to(value.dtype)
        else:
            out[key] = value
    return out
