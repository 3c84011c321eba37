"""The lifecycle registry, a lifecycle's outcome, and the pruning step every sparse lifecycle shares."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ...distributed import is_main
from ...methods import MethodConfig, PruneContext, method_schedule
from ...registry import Registry
from ...utils.io import atomic_write_text
from .. import rundir
from ..layout import RunPaths
from ..run_cost import RunCost

if TYPE_CHECKING:  # the runner imports the lifecycles; they see it only as the ``Run`` they are given
    from ..runner import Run


@dataclass
class Outcome:
    """What a lifecycle hands back to the runner: the last phase's summary, the run's wall time and training
    cost, the extra fields of ``result.json``, and whether the run ends with masks to save."""

    summary: dict[str, Any]
    wall: float
    cost: RunCost
    extra: dict[str, Any] = field(default_factory=dict)
    sparse: bool = True


Lifecycle = Callable[["Run"], Outcome]
LIFECYCLES: Registry[Lifecycle] = Registry("lifecycle")


@dataclass(frozen=True)
class Facts:
    """What the rest of the harness needs to know of a lifecycle without running it, declared where it is
    registered (``LIFECYCLES.register(name, facts=Facts(...))``), so a new lifecycle is one file."""

    #: it starts from the shared dense pretraining (cached per model/data/train/seed; one sweep group)
    pretrained: bool = False
    #: its training curve goes on from the pretraining's (the report draws both)
    continues_pretraining: bool = False
    #: the phase whose checkpoint means pruning is done (a resumed run reads ``prune.json`` back)
    pruned_phase: str | None = None
    #: the phases a sweep's cost estimate counts; ``levels``: one training per IMP level
    phases: tuple[str, ...] = ("train",)
    #: the run ends with masks (False: dense)
    sparse: bool = True
    #: each level trains from the previous level's weights, one after another (cannot be packed)
    chained: bool = False


def lifecycle_facts(schedule: str) -> Facts:
    """The :class:`Facts` of the lifecycle registered under ``schedule``."""
    return LIFECYCLES.meta(schedule).get("facts", Facts())


def facts_for(settings: MethodConfig) -> Facts:
    """The :class:`Facts` of the lifecycle a method's validated settings declare (no model needed)."""
    return lifecycle_facts(method_schedule(settings))


def prune_once(run: Run, ctx: PruneContext, phase: str, prune: Callable[[PruneContext], Any], label: str,
               after_prune: Callable[[], dict[str, Any]] = dict,
               known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prune once per run: ``prune(ctx)`` timed (``label`` names the task on the progress display), then
    ``after_prune()`` (checks and measurements of the fresh masks), recorded after the ``known`` fields in
    ``prune.json`` (and the search history in ``search.json``); returns the record. A run resumed past
    pruning (``phase``'s checkpoint exists) reads the record back from ``prune.json`` instead."""
    record = dict(known or {})
    paths = RunPaths.at(run.run_dir)
    if paths.checkpoint(phase).exists():
        return {**record, **rundir.read_json(paths.prune)}
    t0 = time.perf_counter()
    with run.rep.task(label) as ctx.progress:
        prune(ctx)
    record["prune_time"] = time.perf_counter() - t0
    record.update(after_prune())
    if is_main():
        if history := run.pruner.search_history():
            atomic_write_text(paths.search, json.dumps(history))
        atomic_write_text(paths.prune, json.dumps(record))
    return record


def prune_then_train(run: Run, label: str, after_prune: Callable[[], dict[str, Any]] = dict) -> Outcome:
    """``on_init`` once (:func:`prune_once`), then the ``train`` phase with the method's hooks; its cost is
    the method's own step-by-step count where it keeps one, else the final masks' density."""
    pruner = run.pruner
    ctx = run.context(run.cfg.train)
    pruner.setup(ctx)
    extra = prune_once(run, ctx, "train", pruner.on_init, label, after_prune)
    summary = run.fit(run.cfg.train, "train")
    cost = RunCost()
    cost.add(summary["steps"], pruner.training_flops_ratio(run.built.input_shape) or run.flops_ratio())
    return Outcome(summary, extra.get("prune_time", 0.0) + summary["wall_time"], cost, extra)
