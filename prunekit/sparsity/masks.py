"""MaskSet: the binary masks of a model's prunable weights, kept outside the model.

A MaskSet is an ordered ``{parameter name: bool tensor}``. Mask tensors are updated in place and never
rebound, so cached parameter/mask lists (and compiled graphs) stay valid. Masks are enforced by
multiplying the weights in place after each optimizer step with one ``torch._foreach_mul_`` call.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import CheckpointError, MaskError
from ..utils.io import atomic_path, atomic_write_text
from .targets import Targets, resolve_targets


class MaskSet:
    """Ordered boolean masks keyed by parameter name (``"layer1.0.conv1.weight"``).

    Build with :meth:`from_model` (all ones over the prunable weights of a target policy) or from a
    mapping. :meth:`bind` attaches the model whose weights :meth:`apply_` multiplies.
    """

    def __init__(self, masks: Mapping[str, Tensor]):
        self._masks: "OrderedDict[str, Tensor]" = OrderedDict()
        for name, m in masks.items():
            self._masks[name] = m.detach().to(torch.bool).clone() if m.dtype != torch.bool else m.detach()
        self._params: list[Tensor] | None = None
        self._factors: list[Tensor] = []
        self._versions: list[int] = []

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, targets: "Targets | str | dict | None" = None) -> "MaskSet":
        """All-ones masks over the prunable weights of ``model``; bound to ``model``."""
        params = resolve_targets(targets).select(model)
        if not params:
            raise MaskError(f"no prunable weights in {type(model).__name__} under the targets policy "
                            f"{resolve_targets(targets)}; `prunekit targets MODEL` lists why each parameter is dense")
        ms = cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})
        return ms.bind(model)

    def bind(self, model: nn.Module) -> "MaskSet":
        """Attach ``model``: check that every mask names a parameter of the same shape."""
        named = dict(model.named_parameters())
        params = []
        for name, m in self._masks.items():
            p = named.get(name)
            if p is None:
                raise MaskError(f"mask {name!r} names no parameter of {type(model).__name__}")
            if p.shape != m.shape:
                raise MaskError(
                    f"mask {name!r} has shape {tuple(m.shape)} but the parameter has shape {tuple(p.shape)}"
                )
            if m.device != p.device:
                self._masks[name] = m.to(p.device)
            params.append(p)
        self._params = params
        self._factors = []
        self._versions = []
        return self

    # --- mapping protocol ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def names(self) -> list[str]:
        return list(self._masks)

    def items(self):
        return self._masks.items()

    def values(self):
        return self._masks.values()

    @property
    def params(self) -> list[Tensor]:
        if self._params is None:
            raise MaskError("MaskSet is not bound to a model; call masks.bind(model) first")
        return self._params

    # --- in-place updates ----------------------------------------------------------------------
    def set_(self, name: str, mask: Tensor) -> None:
        """Copy ``mask`` into the existing tensor of ``name`` (never rebinds)."""
        target = self._masks[name]
        if mask.shape != target.shape:
            raise MaskError(f"mask {name!r}: new shape {tuple(mask.shape)} != {tuple(target.shape)}")
        target.copy_(mask)

    def update_(self, masks: Mapping[str, Tensor]) -> "MaskSet":
        for name, m in masks.items():
            if name not in self._masks:
                raise MaskError(f"mask {name!r} is not in this MaskSet")
            self.set_(name, m)
        return self

    def copy(self) -> "MaskSet":
        """A detached copy (unbound)."""
        return MaskSet({n: m.clone() for n, m in self._masks.items()})

    # --- enforcement ---------------------------------------------------------------------------
    def _mask_factors(self) -> list[Tensor]:
        # Multiplying by a float tensor is ~4x faster than by bool; the float copies are refreshed
        # only when a mask's in-place version counter moved (no host sync, no per-step allocation).
        # They take the parameter's layout (e.g. channels_last), so the multiply streams both alike.
        params = self.params
        if len(self._factors) != len(params):
            self._factors = [torch.empty_like(p).copy_(m) for m, p in zip(self._masks.values(), params)]
            self._versions = [m._version for m in self._masks.values()]
            return self._factors
        for i, (m, p) in enumerate(zip(self._masks.values(), params)):
            f = self._factors[i]
            if m._version != self._versions[i] or f.dtype != p.dtype or f.stride() != p.stride():
                self._factors[i] = torch.empty_like(p).copy_(m)
                self._versions[i] = m._version
        return self._factors

    @torch.no_grad()
    def apply_(self) -> "MaskSet":
        """Zero the masked weights of the bound model in place (one foreach call)."""
        torch._foreach_mul_(self.params, self._mask_factors())
        return self

    @torch.no_grad()
    def mask_tensors_(self, tensors: list[Tensor]) -> None:
        """Multiply tensors aligned one-to-one with the masks (gradients, optimizer buffers) in place."""
        if len(tensors) != len(self):
            raise MaskError(f"mask_tensors_ got {len(tensors)} tensors for {len(self)} masks")
        factors = self._mask_factors()
        factors = [f if f.dtype == t.dtype else f.to(t.dtype) for f, t in zip(factors, tensors)]
        torch._foreach_mul_(tensors, factors)

    # --- statistics (host sync: not for hot loops) ----------------------------------------------
    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def nnz(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def sparsity(self) -> float:
        total = self.numel()
        return 1.0 - self.nnz() / total if total else 0.0

    def density(self) -> float:
        return 1.0 - self.sparsity()

    def per_layer(self) -> "OrderedDict[str, dict]":
        """``{name: {shape, numel, nnz, sparsity}}`` in layer order."""
        out: "OrderedDict[str, dict]" = OrderedDict()
        for n, m in self._masks.items():
            nnz = int(m.sum())
            out[n] = {"shape": list(m.shape), "numel": m.numel(), "nnz": nnz, "sparsity": 1.0 - nnz / m.numel()}
        return out

    def report(self) -> dict:
        return {"sparsity": self.sparsity(), "nnz": self.nnz(), "numel": self.numel(), "layers": self.per_layer()}

    def summary_table(self) -> str:
        """A plain-text per-layer table."""
        rows = [f"{'layer':<40} {'shape':<20} {'nnz':>10} {'sparsity':>9}"]
        for n, r in self.per_layer().items():
            rows.append(f"{n:<40} {str(tuple(r['shape'])):<20} {r['nnz']:>10} {r['sparsity']:>9.4f}")
        rows.append(f"{'total':<40} {'':<20} {self.nnz():>10} {self.sparsity():>9.4f}")
        return "\n".join(rows)

    def checksum(self) -> Tensor:
        """A cheap order-sensitive fingerprint (0-d int64 tensor) for cross-process agreement checks."""
        acc = torch.zeros((), dtype=torch.int64, device=next(iter(self._masks.values())).device)
        for i, m in enumerate(self._masks.values()):
            idx = torch.arange(m.numel(), device=m.device, dtype=torch.int64)
            # every position weighs >= 1, so any single flipped entry changes the sum
            acc += (((idx * 2654435761 + i) % 1000003 + 1) * m.reshape(-1)).sum()
        return acc

    # --- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, Tensor]":
        return OrderedDict((n, m.clone()) for n, m in self._masks.items())

    def load_state_dict(self, state: Mapping[str, Tensor], source: str = "state dict") -> "MaskSet":
        """Copy masks in place from ``state``; names and shapes must match exactly."""
        missing = [n for n in self._masks if n not in state]
        extra = [n for n in state if n not in self._masks]
        if missing:
            raise MaskError(f"{source}: no mask for parameter {missing[0]!r}")
        if extra:
            raise MaskError(f"{source}: mask {extra[0]!r} names no prunable parameter of the model")
        for n, m in self._masks.items():
            if tuple(state[n].shape) != tuple(m.shape):
                raise MaskError(
                    f"{source}: mask {n!r} has shape {tuple(state[n].shape)}, the parameter has {tuple(m.shape)}"
                )
            m.copy_(state[n].to(torch.bool))
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write masks (safetensors, uint8) and a JSON sparsity report next to it, atomically."""

        path = Path(path)
        tensors = {n: m.to(torch.uint8).contiguous().cpu() for n, m in self._masks.items()}
        with atomic_path(path) as tmp:
            # safetensors sorts keys; the layer order travels in the metadata
            meta = {"format": "prunekit.masks", "version": "1", "order": json.dumps(list(tensors))}
            save_file(tensors, str(tmp), metadata=meta)
        atomic_write_text(path.with_suffix(".json"), json.dumps(self.report(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "MaskSet":
        """Read a mask file; with ``model``, check names and shapes against it and bind."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: mask file not found")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                keys = list(fh.keys())
                order = json.loads(meta["order"]) if "order" in meta else keys
                if sorted(order) != sorted(keys):
                    raise ValueError("metadata order does not list the stored tensors")
                raw = {n: fh.get_tensor(n) for n in order}
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors mask file ({e})") from None
        ms = cls({n: _as_bool_mask(t, n, path) for n, t in raw.items()})
        if not raw:
            raise CheckpointError(f"{path}: holds no mask tensor; allowed: a mask file written by MaskSet.save")
        if model is not None:
            named = dict(model.named_parameters())
            for n, m in ms.items():
                if n not in named:
                    raise MaskError(f"{path}: mask {n!r} names no parameter of {type(model).__name__}")
                if named[n].shape != m.shape:
                    raise MaskError(
                        f"{path}: mask {n!r} has shape {tuple(m.shape)}, the parameter has {tuple(named[n].shape)}"
                    )
            ms.bind(model)
        return ms


def _as_bool_mask(t: Tensor, name: str, path: Path) -> Tensor:
    """A stored mask as bool: boolean, or numbers that are exactly 0 or 1 (a float mask holding 0.37 would
    otherwise keep every weight); MaskError naming the first other value."""
    if t.dtype == torch.bool:
        return t
    bad = ~((t == 0) | (t == 1))
    if bool(bad.any()):
        value = t[bad][0].item()
        raise MaskError(f"{path}: mask {name!r} holds {value:g} ({str(t.dtype).removeprefix('torch.')}); allowed: "
                        f"boolean masks, or numbers that are 0 or 1 exactly")
    return t.to(torch.bool)
