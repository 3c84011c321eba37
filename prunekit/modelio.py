"""How prunekit reads a model's inputs and outputs, so every method works on a model it did not build.

**Logits rule** (:func:`logits_of`), applied to whatever ``model(x)`` returns:

* a tensor is the logits;
* a mapping — a Hugging Face ``ModelOutput`` or a plain ``dict`` — gives its ``"logits"`` entry; a
  mapping without one must hold exactly one tensor, which is used; anything else is refused;
* a tuple or list gives its first element (the convention of Hugging Face's ``return_dict=False``).

A user ``output_fn(output) -> Tensor`` replaces the rule. **Inputs**: a mapping batch (``{"input_ids":
..., "attention_mask": ...}``) is passed as keyword arguments, anything else positionally.

**Default loss** (:func:`task_loss`): cross-entropy over the last axis. A sequence output ``[B, T, C]``
with targets ``[B, T]`` is scored per token (a language model's targets are the next tokens, shifted by
the data); targets equal to ``-100`` are ignored, as in PyTorch and Hugging Face. A user
``loss_fn(logits, target) -> scalar`` replaces it wherever a method computes a loss.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ModelError

LossFn = Callable[[Tensor, Tensor], Tensor]
OutputFn = Callable[[Any], Tensor]


def logits_of(output: Any) -> Tensor:
    """The logits in ``output`` by the module docstring's rule."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        if "logits" in output and isinstance(output["logits"], Tensor):
            return output["logits"]
        tensors = [k for k, v in output.items() if isinstance(v, Tensor)]
        if len(tensors) == 1:
            return output[tensors[0]]
        raise ModelError(f"the model returned a {type(output).__name__} with no 'logits' entry and tensors "
                         f"{tensors}; allowed: a 'logits' entry, one tensor, or pass output_fn=...")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ModelError(f"the model returned a {type(output).__name__}, not logits; allowed: a tensor, a mapping "
                     "with 'logits', a tuple whose first element is a tensor, or pass output_fn=...")


def task_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy; ``[B, T, C]`` logits with ``[B, T]`` targets are scored per token."""
    if logits.dim() > 2 and target.dim() == logits.dim() - 1:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return F.cross_entropy(logits, target)


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(**x)`` for a mapping batch, else ``model(x)``."""
    return model(**x) if isinstance(x, Mapping) else model(x)


@dataclass(frozen=True)
class ModelIO:
    """A model's output rule and loss: ``None`` fields take the defaults above."""

    output_fn: OutputFn | None = None
    loss_fn: LossFn | None = None

    def logits(self, output: Any) -> Tensor:
        return (self.output_fn or logits_of)(output)

    def forward(self, model: nn.Module, x: Any) -> Tensor:
        """The logits of ``model`` on the batch input ``x``."""
        return self.logits(call_model(model, x))

    def loss(self, model: nn.Module, x: Any, y: Tensor, temperature: float = 1.0) -> Tensor:
        """The loss of ``model`` on ``(x, y)``, logits divided by ``temperature`` first (GraSP)."""
        logits = self.forward(model, x)
        if temperature != 1.0:
            logits = logits / temperature
        return (self.loss_fn or task_loss)(logits, y)

    def merged(self, output_fn: OutputFn | None, loss_fn: LossFn | None) -> "ModelIO":
        """This rule with the given non-``None`` functions taking precedence."""
        return ModelIO(output_fn or self.output_fn, loss_fn or self.loss_fn)


DEFAULT_IO = ModelIO()


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the attention modules of ``model``: ``nn.MultiheadAttention`` and any module whose class
    name says attention (Hugging Face's ``BertSelfAttention``, ``GPT2Attention`` ..., the zoo's
    ``SelfAttention``), outermost only."""
    found: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower():
            if not any(name.startswith(f + ".") for f in found):
                found.append(name)
    return found


def batch_size_of(x: Any) -> int:
    if isinstance(x, Mapping):
        x = next(iter(x.values()))
    return int(x.shape[0])


def slice_batch(x: Any, n: int) -> Any:
    """The first ``n`` samples of a batch input (tensor or mapping of tensors)."""
    if isinstance(x, Mapping):
        return {k: v[:n] for k, v in x.items()}
    return x[:n]


def concat_batches(xs: list[Any]) -> Any:
    """One batch input from several (tensors, or mappings of tensors with the same keys)."""
    if xs and isinstance(xs[0], Mapping):
        return {k: torch.cat([x[k] for x in xs]) for k in xs[0]}
    return torch.cat(xs)


def batch_to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Mapping):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def hf_conv1d_type() -> type | None:
    """Hugging Face's ``Conv1D`` (GPT-2's linear layer, weight stored ``[in, out]``) when transformers is
    loaded, else ``None`` (prunekit never imports transformers for a model that does not use it)."""
    module = sys.modules.get("transformers.pytorch_utils")
    if module is None and "transformers" in sys.modules:
        try:
            import transformers.pytorch_utils as module  # noqa: F811  (already imported by the model)
        except ImportError:  # pragma: no cover
            return None
    return getattr(module, "Conv1D", None)
