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

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ...distributed import is_main
from ...train.checkpoint import load_module_state, load_weights
from ...utils.io import atomic_path, atomic_write_text
from .. import rundir
from ..config import ExperimentConfig, pretrain_identity
from ..run_cost import RunCost
from .base import LIFECYCLES, Outcome

if TYPE_CHECKING:
    from ..runner import Run


def chain_dir(cfg: ExperimentConfig) -> Path:
    """``<root>/_imp/<hash>``: the IMP levels every run with these settings (but the final sparsity) shares."""
    chain_id = {**pretrain_identity(cfg), "method": {m: v for m, v in cfg.method.items() if m != "sparsity"}}
    digest = hashlib.sha256(json.dumps(chain_id, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(cfg.output.root) / "_imp" / digest


@LIFECYCLES.register("iterative")
def iterative(run: Run) -> Outcome:
    chain = chain_dir(run.cfg)
    chain.mkdir(parents=True, exist_ok=True)
    with run.locked(chain):  # runs sharing these IMP levels train each level once
        return _levels(run, chain)


def _levels(run: Run, chain: Path) -> Outcome:
    built, pruner, rep = run.built, run.pruner, run.rep
    k = pruner.retrain_from
    rewind = {name: v.detach().clone() for name, v in built.model.state_dict().items()}  # θ0
    if pruner.trains_own_level0:
        level0 = chain / "level0"
        if (level0 / "summary.json").exists():
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
            tag = hashlib.sha256(json.dumps(history).encode()).hexdigest()[:10]
            directory = chain / f"level{level}-{tag}"
            if (directory / "summary.json").exists():
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
            atomic_write_text(run.run_dir / "levels.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        if level < len(plan) and is_main():
            row = run.row("level", summary=summary, wall=records[-1]["total_wall_time"], cost=cost)
            row.update(run_id=f"imp-{chain.name}-L{level}-{tag}", target_sparsity=row["achieved_sparsity"])
            run.store.record(row)
    return Outcome(summary, records[-1]["total_wall_time"], cost, {"levels": len(plan)})


def _save_level(directory: Path, built, summary: dict[str, Any], extra: dict[str, torch.Tensor] | None = None):
    if not is_main():
        return
    tensors = {f"model.{k}": v for k, v in built.model.state_dict().items()}
    tensors.update({f"mask.{k}": v.to(torch.uint8) for k, v in built.pruner.masks.items()})
    tensors.update({f"rewind.{k}": v for k, v in (extra or {}).items()})
    with atomic_path(directory / "level.safetensors") as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    atomic_write_text(directory / "summary.json", json.dumps(summary))
    for leftover in directory.glob("checkpoint-*.pt"):
        leftover.unlink()


def _load_level(directory: Path, built) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = directory / "level.safetensors"
    tensors = load_weights(path, built.device)
    load_module_state(built.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
    built.pruner.masks.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("mask.")},
                                       source=str(directory))
    rewind = {k[7:]: v for k, v in tensors.items() if k.startswith("rewind.")}
    return rundir.read_json(directory / "summary.json", fix=f"delete {directory} to recompute the level"), rewind
