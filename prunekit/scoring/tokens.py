"""Token-id inputs for the data-free path counts (SynFlow, DPaI, PHEW, NPB).

Those methods feed one all-ones input of the model's input shape. A model whose input is token ids
starts with an ``nn.Embedding``, an index lookup: a float all-ones tensor is no input for it. prunekit
reads an embedding that consumes the input as what it computes, a Linear layer over the one-hot
vocabulary; the all-ones input then gives its weight summed over the vocabulary, per embedding dimension
(SynFlow's absolute weights: ``|E|.sum(0)``; a path count: ``V`` paths into every dimension, so counting
starts at the embedding output). Embeddings that look up other indices (positions, token types) do not
depend on the input: SynFlow keeps them as it keeps biases (absolute values), path counts zero them
(no path starts there), as DPaI zeroes a ViT's position embedding. Feeding the ones vector itself to the
network instead would be wrong: a LayerNorm maps a constant vector to zero and every path dies.

The model is then called on token ids (zeros of shape ``(1, *input_shape)``; which ids does not matter,
the input embeddings ignore them).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..modelio import call_model
from .data import train_mode


def input_embeddings(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names of the ``nn.Embedding`` modules that read the model's input, when the input is token ids;
    ``[]`` when it is not (no embedding reads a token-id probe, or the model rejects one)."""
    embeddings = {id(m): n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    if not embeddings:
        return []
    param = next(model.parameters())
    ids = torch.zeros((1, *input_shape), dtype=torch.long, device=param.device)
    storage = ids.untyped_storage().data_ptr()
    found: list[str] = []

    def hook(mod, args):
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.untyped_storage().data_ptr() == storage and embeddings[id(mod)] not in found:
            found.append(embeddings[id(mod)])

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if id(m) in embeddings]
    try:
        with torch.no_grad(), train_mode(model, False):
            call_model(model, ids)
    except Exception:  # noqa: BLE001 - a feature model fed token ids fails somewhere: not a token model
        pass
    finally:
        for h in handles:
            h.remove()
    return found


def probe_input(input_shape: Sequence[int], token: bool, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The input of a path-count forward: token ids (zeros) or an all-ones float tensor, batch 1."""
    if token:
        return torch.zeros((1, *input_shape), dtype=torch.long, device=device)
    return torch.ones((1, *input_shape), dtype=dtype, device=device)


def summed_lookup(weight: Callable[[], Tensor]) -> Callable[[Tensor], Tensor]:
    """An embedding forward that is the one-hot Linear on an all-ones input: ``weight().sum(0)`` at every
    position of ``ids``."""

    def forward(ids: Tensor) -> Tensor:
        w = weight()
        return w.sum(0).expand(*ids.shape, w.shape[1])

    return forward


def zero_lookup(module: nn.Embedding, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """An embedding forward that outputs zeros (a lookup no input path goes through)."""
    return lambda ids: torch.zeros((*ids.shape, module.embedding_dim), dtype=dtype, device=ids.device)


def model_probe(model: nn.Module, input_shape: Sequence[int]) -> Tensor:
    """The path-count input of ``model``: token ids when an embedding reads its input, else all ones."""
    param = next(model.parameters())
    return probe_input(input_shape, bool(input_embeddings(model, input_shape)), param.device, param.dtype)
