"""SynFlow: Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020 (``ganguli-lab/Synaptic-Flow`` ``Pruners/pruners.py: SynFlow``).

Every floating-point parameter *and buffer* is replaced by its absolute value (the reference calls
``abs_`` on ``model.state_dict()``, so BatchNorm running means are made non-negative too), the model runs
in eval mode on one all-ones input, ``R = sum(output)``, and the score of a prunable weight is
``|w * dR/dw|`` with the current mask applied (pruned weights score 0). The reference runs in float32
(its ``model.double()`` is commented out); ``dtype=torch.float64`` is an option.

A token-id model (an ``nn.Embedding`` reads the input) is fed token ids; the input embedding acts as the
Linear layer over the one-hot vocabulary it is, so the all-ones input gives ``|E|.sum(0)`` at every
position (:mod:`prunekit.scoring.tokens`); position and token-type lookups stay as they are (absolute
values, like biases). The output may be a Hugging Face ``ModelOutput`` (:func:`prunekit.modelio.logits_of`).

Here the model is never modified: the rounds run on a deep copy whose state is made non-negative once,
with the prunable weights replaced by views of one flat tensor, so a round is one forward/backward of the
copy and a handful of whole-model tensor operations (no per-round re-parametrisation).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from ..modelio import call_model, logits_of
from ..sparsity import MaskSet
from .tokens import input_embeddings, probe_input, summed_lookup


class SynFlowScorer:
    """Reusable SynFlow rounds on a linearised copy of ``model``.

    ``train=True`` runs the copy in train mode (Synaptic-Flow ``--train-mode``: BatchNorm then normalises
    the single all-ones sample with its own statistics). :meth:`flat_scores` takes the current keep-mask
    as one flat bool tensor (layer order of ``masks``) and returns the flat scores in a buffer the next
    call overwrites; pruned entries of the copy's weights are zeroed, the model is untouched.
    """

    def __init__(self, model: nn.Module, masks: MaskSet, input_shape: Sequence[int], dtype: torch.dtype | None = None,
                 train: bool = False):
        params = masks.params
        dtype = dtype or params[0].dtype
        self.names = masks.names()
        self.numels = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        with torch.no_grad():
            self.flat = torch.cat([p.detach().abs().to(dtype).reshape(-1) for p in params])
            self.flat.mul_(torch.cat([m.reshape(-1) for m in masks.values()]))
            self.net = copy.deepcopy(model).to(dtype).train(train)  # Synaptic-Flow: eval unless --train-mode
            for t in list(self.net.parameters()) + list(self.net.buffers()):
                if t.is_floating_point():
                    t.abs_()
                t.requires_grad_(False)
        self.flat.requires_grad_(True)
        self._scores = torch.empty_like(self.flat, requires_grad=False)  # reused: the next round overwrites it
        self._int_view = {torch.float32: torch.int32, torch.float64: torch.int64}.get(dtype, dtype)
        self.slots = []
        for name in self.names:
            owner, _, leaf = name.rpartition(".")
            module = self.net.get_submodule(owner)
            del module._parameters[leaf]  # becomes a plain attribute: a view of ``flat``, set every round
            self.slots.append((module, leaf))
        embeddings = input_embeddings(model, input_shape)
        for name in embeddings:
            module = self.net.get_submodule(name)
            module.forward = summed_lookup(lambda m=module: m.weight)  # a view of ``flat`` when it is pruned
        self.ones = probe_input(input_shape, bool(embeddings), self.flat.device, dtype)

    def flat_scores(self, keep: Tensor | None = None) -> Tensor:
        if keep is not None:
            with torch.no_grad():  # the weights are >= 0: zeroing the bits is multiplying by 0/1, 4x faster
                self.flat.view(self._int_view).mul_(keep)
        # fresh views every round: autograd forbids reusing views of a tensor modified in place; a plain
        # attribute now, so the instance dict is set directly (nn.Module.__setattr__'s checks cost ~2 µs)
        for (module, leaf), v, shape in zip(self.slots, self.flat.split(self.numels), self.shapes):
            module.__dict__[leaf] = v.view(shape)
        (grad,) = torch.autograd.grad(logits_of(call_model(self.net, self.ones)).sum(), self.flat)
        return torch.mul(grad, self.flat.detach(), out=self._scores).abs_()

    def scores(self, keep: Tensor | None = None) -> dict[str, Tensor]:
        flat = self.flat_scores(keep).clone()
        return {n: v.view(s) for n, v, s in zip(self.names, flat.split(self.numels), self.shapes)}


def synflow_scores(model: nn.Module, masks: MaskSet, input_shape: Sequence[int],
                   dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """One SynFlow round: ``{name: |w * dR/dw|}`` for the current masks."""
    return SynFlowScorer(model, masks, input_shape, dtype).scores()
