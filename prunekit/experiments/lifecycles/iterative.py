"""``iterative``: IMP's level chain (open_lth ``lottery/runner.py``), driven through the level-chain
methods of :class:`prunekit.methods.imp.IMP`.

Level 0 trains the dense network with ``cfg.train`` (the shared pretraining unless the method trains its
own level 0 to record a rewind point at a step k > 0); every further level prunes, rewinds and retrains
with ``cfg.train`` from step k (:meth:`IMP.next_level`). Levels are cached under ``<root>/_imp/<hash>/``
keyed by their kept-count history, so runs that differ only in the final sparsity share their common
levels. Each level is a line of ``levels.jsonl`` in the run directory and, except the last (the run's own
row), a store row with status ``level``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ...distributed import is_main
from ...train.checkpoint import load_module_state, load_weights
from ...utils.hashing import settings_hash
from ...utils.io import atomic_path, atomic_write_text
from .. import rundir
from ..layout import ChainPaths, LevelPaths, RunPaths
from ..run_cost import RunCost
from .base import LIFECYCLES, Facts, Outcome

if TYPE_CHECKING:
    from ..runner import Run


@LIFECYCLES.register("iterative", facts=Facts(pretrained=True, phases=("pretrain", "levels"), chained=True))
def iterative(run: Run) -> Outcome:
    chain = RunPaths.of(run.cfg).chain
    chain.path.mkdir(parents=True, exist_ok=True)
    with run.locked(chain.path):  # runs sharing these IMP levels train each level once
        return _levels(run, chain)


def _levels(run: Run, chain: ChainPaths) -> Outcome:
    built, pruner, rep = run.built, run.pruner, run.rep
    k = pruner.retrain_from
    rewind = {name: v.detach().clone() for name, v in built.model.state_dict().items()}  # θ0
    if pruner.trains_own_level0:
        level0 = chain.level(0).path
        if chain.level(0).summary.exists():
            summary, rewind = _load_level(level0, built)
        else:
            level0.mkdir(parents=True, exist_ok=True)
            summary = run.fit(run.cfg.train, "train", level0)
            rewind = pruner.level0_rewind_point(summary["steps"])
            _save_level(level0, built, summary, rewind)
    else:
        summary = run.pretrain()
    records, history, tag = [], [], "dense"
    plan = pruner.plan()
    cost = RunCost()
    cost.add(summary["steps"])  # level 0: dense
    for level in range(len(plan) + 1):
        if level > 0:
            history.append(plan[level - 1])
            tag = settings_hash(history)
            directory = chain.level(level, tag).path
            if chain.level(level, tag).summary.exists():
                summary, _ = _load_level(directory, built)
                pruner.reached_level(level)
                rep.message(f"  IMP level {level}/{len(plan)} (sparsity {pruner.masks.sparsity():.4f}): "
                            f"reusing {directory}")
            else:
                pruner.next_level(level, rewind)
                directory.mkdir(parents=True, exist_ok=True)
                rep.context = f"IMP level {level}/{len(plan)}, sparsity {pruner.masks.sparsity():.4f}"
                try:
                    summary = run.fit(run.cfg.train, "train", directory, start_step=k)
                finally:
                    rep.context = ""
                _save_level(directory, built, summary)
            cost.add(summary["steps"] - k, run.flops_ratio())
        records.append({"level": level, "sparsity": pruner.masks.sparsity(), "nnz": pruner.masks.nnz(),
                        **{key: summary[key] for key in ("final_acc", "best_acc", "steps", "wall_time")},
                        "total_wall_time": sum(r["wall_time"] for r in records) + summary["wall_time"]})
        if is_main():
            atomic_write_text(RunPaths.of(run.cfg).levels, "".join(json.dumps(r) + "\n" for r in records))
        if level < len(plan) and is_main():
            row = run.row("level", summary=summary, wall=records[-1]["total_wall_time"], cost=cost)
            row = dataclasses.replace(row, run_id=f"imp-{chain.path.name}-L{level}-{tag}",
                                      target_sparsity=row.achieved_sparsity)
            run.store.record(row)
    return Outcome(summary, records[-1]["total_wall_time"], cost, {"levels": len(plan)})


def _save_level(directory: Path, built, summary: dict[str, Any], extra: dict[str, torch.Tensor] | None = None):
    if not is_main():
        return
    tensors = {f"model.{k}": v for k, v in built.model.state_dict().items()}
    tensors.update({f"mask.{k}": v.to(torch.uint8) for k, v in built.pruner.masks.items()})
    tensors.update({f"rewind.{k}": v for k, v in (extra or {}).items()})
    level = LevelPaths(directory)
    with atomic_path(level.state) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    atomic_write_text(level.summary, json.dumps(summary))
    for leftover in level.checkpoints():
        leftover.unlink()


def _load_level(directory: Path, built) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = LevelPaths(directory).state
    tensors = load_weights(path, built.device)
    load_module_state(built.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
    built.pruner.masks.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("mask.")},
                                       source=str(directory))
    rewind = {k[7:]: v for k, v in tensors.items() if k.startswith("rewind.")}
    return rundir.read_json(LevelPaths(directory).summary, fix=f"delete {directory} to recompute the level"), rewind
