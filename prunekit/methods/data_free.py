"""Shared scaffolding of the data-free pruning-at-initialization methods that need only an input shape
(``phew``, ``npb``): the settings every one of them takes and a seed fixed when the pruner is built; and
:class:`KeepsLayersDense`, for the path methods (``dpai``, ``phew``) that keep an attention's query and key
projections dense because their definition gives those layers nothing to select by."""
from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field
from torch import nn

from ..errors import MaskError
from ..scoring.attention import attention_projections, packed_attention_weights, score_only
from ..scoring.tokens import model_probe
from ..sparsity import MaskSet
from .base import InitPruner, MethodConfig

QUERY_KEY = ("attention query/key projection: it only weights the softmax, no input->output path goes through "
             "it (the DPaI reference keeps its q/k in_proj_weight dense)")
VALUE = ("attention value projection: dense as in the DPaI reference (its packed in_proj_weight is never pruned); "
         "attention='paths' searches it")
PACKED = ("nn.MultiheadAttention packed projection: no Conv/Linear module to count paths through "
          "(the DPaI reference keeps in_proj_weight dense)")


def attention_kept_dense(model: nn.Module, input_shape: Sequence[int], values: bool = False) -> dict[str, str]:
    """``{weight name: reason}`` of the attention projections a path method keeps dense: queries and keys,
    packed ``nn.MultiheadAttention`` projections, and with ``values`` the value projections too."""
    roles = attention_projections(model, model_probe(model, input_shape))
    out = {n: QUERY_KEY for n in score_only(roles)}
    if values:
        out.update({n: VALUE for n, r in roles.items() if "value" in r})
    # one layer projecting q or k together with v (GPT-2's c_attn): its q/k part has no path either
    out.update({n: PACKED for n, r in roles.items() if "value" in r and r & {"query", "key"} and n not in out})
    out.update({n: PACKED for n in packed_attention_weights(model)})
    return out

FUNCTIONAL = ("nn.MultiheadAttention out_proj: applied functionally inside the attention (its forward is never "
              "called), so no walk or layer-by-layer program can trace it")


def untraceable_attention_weights(model: nn.Module) -> dict[str, str]:
    """``{weight name: reason}`` of the ``nn.MultiheadAttention`` weights a method that follows the layers a
    forward pass calls (PHEW's walks, NPB's layer programs) cannot see: the packed projections and the
    out-projection, which the module applies with ``F.linear`` instead of calling it."""
    out = {n: PACKED for n in packed_attention_weights(model)}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            out[f"{name}.out_proj.weight" if name else "out_proj.weight"] = FUNCTIONAL
    return out


class KeepsLayersDense:
    """Targets a method's definition cannot select in leave its mask set: they stay dense, do not count in
    the sparsity, are listed with the reason by :meth:`report`, and travel in the state dict (a resumed run
    narrows its masks the same way before loading them)."""

    kept_dense: dict[str, str] = {}
    masks: MaskSet
    model: nn.Module
    name: str

    def keep_dense(self, reasons: dict[str, str]) -> None:
        reasons = {n: r for n, r in reasons.items() if n in self.masks}
        if not reasons:
            return
        if len(reasons) == len(self.masks):
            raise MaskError(f"{self.name}: every target is kept dense ({next(iter(reasons.values()))}); "
                            "nothing is left to prune")
        self.kept_dense = {**self.kept_dense, **reasons}
        self.masks = MaskSet({n: m for n, m in self.masks.items() if n not in reasons}).bind(self.model)

    def report(self) -> str:
        lines = [super().report()]  # type: ignore[misc]
        lines += [f"kept dense by {self.name}: {n} ({why})" for n, why in self.kept_dense.items()]
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kept_dense": dict(self.kept_dense)}  # type: ignore[misc]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.keep_dense(dict(state.get("kept_dense", {})))
        super().load_state_dict(state)  # type: ignore[misc]


class DataFreeConfig(MethodConfig):
    seed: int | None = Field(None, description="the method's randomness; None: drawn from the global RNG when "
                             "the pruner is built")
    input_shape: tuple[int, ...] | None = Field(None, description="shape of one input, e.g. [3, 32, 32]; None: "
                                                "one sample of ctx.batches")


class DataFreePruner(InitPruner):
    """Base of ``phew`` and ``npb``: prunes once before training from an input shape, seeded as
    :class:`prunekit.methods.base.InitPruner`."""

    config: DataFreeConfig
