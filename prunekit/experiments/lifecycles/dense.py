"""``none``: dense training only (the shared, cached pretraining)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..run_cost import RunCost
from .base import LIFECYCLES, Outcome

if TYPE_CHECKING:
    from ..runner import Run


@LIFECYCLES.register("none")
def dense(run: Run) -> Outcome:
    summary = run.pretrain()
    cost = RunCost()
    cost.add(summary["steps"])
    return Outcome(summary, summary["wall_time"], cost, sparse=False)
