"""``init``: prune at initialization (``on_init``), then train the sparse network."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...diagnostics import check_layer_collapse
from .base import LIFECYCLES, Facts, Outcome, prune_then_train

if TYPE_CHECKING:
    from ..runner import Run


@LIFECYCLES.register("init", facts=Facts(pruned_phase="train"))
def at_init(run: Run) -> Outcome:
    built = run.built

    def check() -> dict:  # before any training time is spent; a cut branch only warns
        check_layer_collapse(built.model, built.pruner.masks, built.input_shape, raise_error="disconnected")
        return {}

    return prune_then_train(run, f"prune: {run.cfg.method_settings.name}", check)
