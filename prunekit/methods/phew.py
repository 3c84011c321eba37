"""PHEW: Patil & Dovrolis, "PHEW: Constructing Sparse Networks that Learn Fast and Generalize Well without
Training Data", ICML 2021 (code ``ShreyasMalakarjunPatil/PHEW``, ``PHEW/phew.py: phew_masks``).

Data-free: the mask is the union of the weights stepped on by biased random walks (probability
proportional to ``|w|``) that alternate input->output and output->input, until the *global* budget is
met (the per-layer densities are an outcome of the walks, as in the reference). The walks are described
in :mod:`prunekit.scoring.phew`. The model's initial weights are read, never changed (except for the
masking itself); the input shape is only used to find the order in which the layers are called.

Attention (the reference has no transformer): the walks follow the value path. Query and key projections
only weight the softmax, so no walk steps through them; they are kept dense, out of the mask set, and
listed by ``report()`` (:class:`~prunekit.methods.data_free.KeepsLayersDense`), as DPaI's reference keeps
them. ``nn.MultiheadAttention`` (whose ``out_proj`` forward torch never calls) is refused by the trace.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..errors import MaskError
from ..scoring.data import input_shape_from
from ..scoring.paths import transposed_names
from ..scoring.phew import PhewWalker, phew_keep, trace_layers
from ..sparsity import num_keep
from .base import PruneContext
from .data_free import (QUERY_KEY, DataFreeConfig, DataFreePruner, KeepsLayersDense, attention_kept_dense,
                        untraceable_attention_weights)
from .registry import METHODS


class PHEWConfig(DataFreeConfig):
    """``seed`` drives the walks."""

    jump: Literal["reference", "block_input"] = Field(
        "reference", description="where a forward walk chooses between a projection shortcut and its block's "
        "main branch: one layer early (the reference's phew_masks) or at the block input")


@METHODS.register("phew", family="pai")
class PHEW(KeepsLayersDense, DataFreePruner):
    """PHEW masks at initialization (no data); exact global budget ``int(s * N)`` weights removed."""

    Config = PHEWConfig
    name = "phew"
    config: PHEWConfig

    def prune(self, ctx: PruneContext | None = None):
        ctx = ctx or PruneContext()
        shape = input_shape_from(self.config.input_shape, ctx.batches, self.name)
        attention = attention_kept_dense(self.model, shape)
        self.keep_dense({**attention, **untraceable_attention_weights(self.model)})
        total = self.masks.numel()
        keep = num_keep(total, self.target_sparsity())
        if keep == total:
            kept = torch.ones(total, dtype=torch.bool)
        else:
            walker = self.walker(shape, skip=[n for n, why in attention.items() if why == QUERY_KEY])
            kept = phew_keep(walker, total, keep, self.generator())
        numels = [m.numel() for m in self.masks.values()]
        flipped = set(transposed_names(self.model, self.masks.names()))  # walked in their [out, in] form
        self.masks.update_({n: (k.view(m.shape[::-1]).t() if n in flipped else k.view(m.shape)).to(m.device)
                            for (n, m), k in zip(self.masks.items(), kept.split(numels))})
        self.enforce()
        return self.masks

    def walker(self, input_shape, skip=()) -> PhewWalker:
        """The walks over this model's layers (every Conv/Linear but ``skip`` is walked; only masked ones are
        recorded)."""
        chain = trace_layers(self.model, input_shape, skip)
        offsets, at = {}, 0
        for n, m in self.masks.items():
            offsets[n] = at
            at += m.numel()
        missing = sorted(set(offsets) - {c.name for c in chain})
        if missing:
            raise MaskError(f"phew: {missing[0]!r} is not a Conv/Linear weight used in the forward pass")
        params = dict(self.model.named_parameters())
        weights = [params[c.name].detach().cpu() for c in chain]
        weights = [w.t() if c.transposed else w for w, c in zip(weights, chain)]
        return PhewWalker(chain, weights, [offsets.get(c.name) for c in chain], self.config.jump)
