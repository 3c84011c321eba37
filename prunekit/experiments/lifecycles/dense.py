"""``none``: dense training only (the shared, cached pretraining)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..run_cost import RunCost
from .base import LIFECYCLES, Facts, Outcome

if TYPE_CHECKING:
    from ..runner import Run


@LIFECYCLES.register("none", facts=Facts(pretrained=True, continues_pretraining=True, phases=("pretrain",),
                                                 sparse=False))
def dense(run: Run) -> Outcome:
    summary = run.pretrain()
    cost = RunCost()
    cost.add(summary["steps"])
    return Outcome(summary, summary["wall_time"], cost, sparse=False)
