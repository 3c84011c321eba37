"""``during``: the method's hooks prune (and regrow) while training; ``on_init`` sets its initial masks
(e.g. an ERK start)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import LIFECYCLES, Facts, Outcome, prune_then_train

if TYPE_CHECKING:
    from ..runner import Run


@LIFECYCLES.register("during", facts=Facts(pruned_phase="train"))
def during(run: Run) -> Outcome:
    return prune_then_train(run, "")
