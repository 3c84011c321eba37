"""Which Conv/Linear layers of a model project an attention's query, key or value.

Path counting (DPaI, NPB's path term) and PHEW's walks treat a network as a linear chain of Conv/Linear
layers. In attention, ``softmax(q k^T) v``, only the value carries the input forward; the query and key
projections only weight the softmax, a gate rather than a path: a path count gives them no gradient and
a walk has no edge through them. :func:`attention_projections` finds them by running the model once and
recording every ``scaled_dot_product_attention`` call (``query, key, value``) and every explicit
attention (``softmax`` of a matrix product, then multiplied with the values); each argument is followed
back through reshapes, transposes, splits and scalings only, to the Conv/Linear module that produced it.
A layer reached any other way (a LayerNorm, a residual sum in between) is not an attention projection.
``nn.MultiheadAttention`` projects through its packed ``in_proj_weight`` (no module): see
:func:`packed_attention_weights`.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..modelio import call_model
from .data import train_mode
from .paths import counted_layer_types

#: autograd nodes a projection's output may pass through before it is a query, key or value
_SHAPE_OPS = {"View", "Reshape", "ReshapeAlias", "UnsafeView", "Transpose", "Permute", "Expand", "Clone", "Split",
              "SplitWithSizes", "Unbind", "Select", "Slice", "Squeeze", "Unsqueeze", "Mul", "Div", "ToCopy",
              "Alias", "T", "AsStrided"}
#: between the attention logits and their matrix product: the scale, an additive or filled-in mask
_LOGIT_OPS = _SHAPE_OPS | {"Add", "Sub", "MaskedFill", "Where"}
_MATMUL = {"Bmm", "Mm", "Matmul", "Baddbmm"}
_SOFTMAX = {torch.softmax, F.softmax, Tensor.softmax}
_PRODUCT = {torch.matmul, torch.bmm, Tensor.matmul, Tensor.bmm, Tensor.__matmul__}


def _op(node: Any) -> str:
    return re.sub(r"Backward\d*$", "", type(node).__name__)


class _AttentionCalls(TorchFunctionMode):
    """Records ``(role, tensor)`` for the query, key and value of every attention computed."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, Tensor]] = []
        self.logits: list[Tensor] = []
        self._probs: list[Tensor] = []  # kept alive: compared by identity

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            qkv = list(args[:3]) + [kwargs[k] for k in ("query", "key", "value")[len(args):] if k in kwargs]
            self.found += list(zip(("query", "key", "value"), qkv))
        elif func in _SOFTMAX and args and isinstance(args[0], Tensor):
            self.logits.append(args[0])
            self._probs.append(out)
        elif func is F.dropout and args and any(args[0] is p for p in self._probs):
            self._probs.append(out)
        elif func in _PRODUCT and len(args) == 2 and any(args[0] is p for p in self._probs):
            self.found.append(("value", args[1]))
        return out


def _sources(node: Any, producers: dict[Any, str], ops: set[str], out: set[str]) -> None:
    """Conv/Linear layers reached back from ``node`` through ``ops`` only."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n in producers:
            out.add(producers[n])
        elif _op(n) in ops:
            stack.extend(next_fn for next_fn, _ in n.next_functions)


def _logit_operands(node: Any) -> list[tuple[str, Any]]:
    """``[("query", a), ("key", b)]`` for the matrix products ``a @ b`` that attention logits come from."""
    stack, seen, found = [node], set(), []
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if _op(n) in _MATMUL:
            operands = [f for f, _ in n.next_functions if f is not None][-2:]
            found += list(zip(("query", "key"), operands))
        elif _op(n) in _LOGIT_OPS:
            stack.extend(f for f, _ in n.next_functions)
    return found


def attention_projections(model: nn.Module, probe: Any) -> dict[str, set[str]]:
    """``{weight name: roles}`` (``"query"``, ``"key"``, ``"value"``) of the Conv/Linear layers whose output
    is an attention's query, key or value, from one eval-mode forward of ``probe``; ``{}`` without attention."""
    names = {m: (f"{n}.weight" if n else "weight") for n, m in model.named_modules()
             if isinstance(m, counted_layer_types())}
    producers: dict[Any, str] = {}

    def hook(mod, args, output):
        if isinstance(output, Tensor) and output.grad_fn is not None:
            producers[output.grad_fn] = names[mod]

    handles = [m.register_forward_hook(hook) for m in names]
    calls = _AttentionCalls()
    try:
        with torch.enable_grad(), train_mode(model, False), calls:
            call_model(model, probe)
    finally:
        for h in handles:
            h.remove()
    pending = [(role, t.grad_fn) for role, t in calls.found if isinstance(t, Tensor)]
    for logits in calls.logits:
        pending += _logit_operands(logits.grad_fn)
    roles: dict[str, set[str]] = {}
    for role, node in pending:
        layers: set[str] = set()
        _sources(node, producers, _SHAPE_OPS, layers)
        for name in layers:
            roles.setdefault(name, set()).add(role)
    return roles


def score_only(roles: dict[str, set[str]]) -> list[str]:
    """The layers whose output is only ever a query or a key (never a value)."""
    return [n for n, r in roles.items() if r <= {"query", "key"}]


def packed_attention_weights(model: nn.Module) -> list[str]:
    """``in_proj_weight`` / ``q_proj_weight`` ... of every ``nn.MultiheadAttention`` (raw Parameters)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            out += [prefix + p for p, v in mod.named_parameters(recurse=False) if v.dim() == 2]
    return out
