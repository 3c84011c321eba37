"""``during``: the method's hooks prune (and regrow) while training; ``on_init`` sets its initial masks
(e.g. an ERK start)."""
from __future__ import annotations

from .base import LIFECYCLES, Outcome, prune_then_train


@LIFECYCLES.register("during")
def during(run) -> Outcome:
    return prune_then_train(run, "")
