"""Checkpoints that resume exactly and load safely.

A checkpoint holds model, optimizer, LR schedule, method state (masks included), the RNG states and
the metric history. It is written atomically (temp file, fsync, rename) and read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickled objects.
Weights cached between runs are safetensors files (:func:`load_weights`). A file that is corrupt or
belongs to another model raises :class:`~prunekit.errors.CheckpointError` naming it and the first
parameter that does not fit.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import CheckpointError, first_line
from ..utils.io import atomic_path


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_to_plain, np_state[2:])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(obj: Any) -> Any:
    return [_to_plain(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuple(obj: Any) -> Any:
    return tuple(_to_tuple(o) for o in obj) if isinstance(obj, list) else obj


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(_own_storage(state), tmp)
    return Path(path)


def _own_storage(obj: Any) -> Any:
    """``obj`` with every tensor that views a larger storage copied out (``torch.save`` writes a view's
    whole storage: a packed member's slice would carry the whole pack)."""
    if isinstance(obj, Tensor):
        return obj.clone() if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size() else obj
    if isinstance(obj, dict):
        items = [(k, _own_storage(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_own_storage(v) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; anything else (pickled code, a corrupt file) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols: the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load ({_unpickler_reason(e)}); a checkpoint may hold only "
                              f"tensors and plain containers, and prunekit never unpickles Python objects from a "
                              f"file; {RESAVE}") from None
    except Exception as e:  # noqa: BLE001 - torch.load on damaged bytes raises anything (IndexError, AssertionError ...)
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line(e)}); delete it "
                              f"to restart the phase") from None


RESAVE = ("if it is yours (e.g. written by torch.save(model)), re-save its tensors in a trusted Python session: "
          "torch.save(model.state_dict(), path)")


def _unpickler_reason(e: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler found (``Unsupported global: GLOBAL x.y``), never its advice to
    load with ``weights_only=False``: PyTorch rewords that advice between versions, so only the sentence
    naming the refused item is kept, and any sentence mentioning ``weights_only`` is dropped."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"(Unsupported (?:global|operand|class).*?)(?=\.\s+[A-Z]|\.?\s*$|\n)", text)
    if found:
        return found.group(1).strip()
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+|\n", text) if s.strip()]
    safe = [s for s in sentences if "weights_only" not in s and "trust" not in s]
    return safe[0].rstrip(".") if safe else "it holds Python objects, not only tensors"


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file; CheckpointError when it is missing or not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)}); delete it to "
                              f"recompute it") from None


def load_module_state(module: nn.Module, state: Any, source: str) -> None:
    """``module.load_state_dict(state)`` after checking names and shapes, so a checkpoint of another model
    is a CheckpointError naming the first parameter that does not fit."""
    own = module.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: holds {type(state).__name__}, expected a state dict of "
                              f"{type(module).__name__}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"no entry for {missing[0]!r}" if missing else f"unexpected entry {unexpected[0]!r}"
        raise CheckpointError(f"{source}: {what}; expected the parameters of this run's {type(module).__name__}")
    for name, tensor in own.items():
        value = state[name]
        if not isinstance(value, Tensor) or value.shape != tensor.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CheckpointError(f"{source}: {name!r} has shape {shape}, the model has {tuple(tensor.shape)}")
    module.load_state_dict(state)
