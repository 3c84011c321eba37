"""``after``: dense pretraining (cached and shared by every run with the same model/data/train/seed,
``dense`` included), one pruning step, then fine-tuning (OMP-style)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...train import evaluate
from ..run_cost import RunCost, add_sparse_phase
from .base import LIFECYCLES, Facts, Outcome, prune_once

if TYPE_CHECKING:
    from ..runner import Run


@LIFECYCLES.register("after", facts=Facts(pretrained=True, continues_pretraining=True, pruned_phase="finetune",
                                                  phases=("pretrain", "finetune")))
def after(run: Run) -> Outcome:
    built, pruner = run.built, run.pruner
    pre = run.pretrain()
    cost = RunCost()
    cost.add(pre["steps"])
    finetune_cfg = run.cfg.finetune or run.cfg.train
    ctx = run.context(finetune_cfg)
    pruner.setup(ctx)
    pruned = prune_once(run, ctx, "finetune", pruner.prune, f"prune: {run.cfg.method_settings.name}",
                        lambda: {"pruned_acc": evaluate(built.model, built.test_loader)["acc"]},
                        known={"pretrain_acc": pre["final_acc"]})
    summary = run.fit(finetune_cfg, "finetune")
    add_sparse_phase(cost, pruner, summary["steps"], run.flops_ratio())
    wall = pre["wall_time"] + pruned.get("prune_time", 0.0) + summary["wall_time"]
    return Outcome(summary, wall, cost, pruned)
