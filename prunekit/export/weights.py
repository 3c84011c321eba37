"""Pruned weights in one safetensors file: the state dict, the masks and a sparsity report.

Tensors are stored as ``model/<state key>`` and ``mask/<parameter name>`` (uint8); the metadata holds
``format``, the mask order, the JSON report (per-layer sparsity, parameter counts) and any extra
string fields the caller adds (for a compact model: the Torch-Pruning history that rebuilds its shape
from the original architecture, see :func:`prunekit.export.compact.rebuild_compact`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import CheckpointError
from ..sparsity import MaskSet
from ..sparsity.measure import count_params
from ..utils.io import atomic_path

FORMAT = "prunekit.pruned"


def sparsity_report(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict:
    report: dict = {"params": count_params(model, masks)}
    if masks:
        ms = masks if isinstance(masks, MaskSet) else MaskSet(masks)
        report.update(ms.report())
    return report


def save_pruned(path: str | os.PathLike, model: nn.Module, masks: Mapping[str, Tensor] | None = None,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s state dict, ``masks`` and a sparsity report to ``path`` atomically."""
    path = Path(path)
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    mask_items = list(masks.items()) if masks is not None else []
    tensors.update({f"mask/{n}": m.to(torch.uint8).contiguous().cpu() for n, m in mask_items})
    meta = {"format": FORMAT, "version": "1", "mask_order": json.dumps([n for n, _ in mask_items]),
            "report": json.dumps(sparsity_report(model, dict(mask_items) or None))}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_pruned(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
    """``(state dict, masks, metadata)`` of a file written by :func:`save_pruned`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            state = {k[len("model/"):]: fh.get_tensor(k) for k in fh.keys() if k.startswith("model/")}
            order = json.loads(meta.get("mask_order", "[]"))
            masks = {n: fh.get_tensor(f"mask/{n}").to(torch.bool) for n in order}
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable prunekit pruned-weights file ({e})") from None
    return state, masks, meta
