"""``none``: dense training only (the shared, cached pretraining)."""
from __future__ import annotations

from ..run_cost import RunCost
from .base import LIFECYCLES, Outcome


@LIFECYCLES.register("none")
def dense(run) -> Outcome:
    summary = run.pretrain()
    cost = RunCost()
    cost.add(summary["steps"])
    return Outcome(summary, summary["wall_time"], cost, sparse=False)
