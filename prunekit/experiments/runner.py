"""Running an experiment: resolve, build, chain the phases, write the run directory and the store.

Phases by method schedule (``Pruner.schedule``):

* ``none`` (dense): ``train``.
* ``init`` (pruning at initialization): ``prune`` (``on_init``) → ``train``.
* ``during`` (dynamic sparse training, gradual pruning): ``train`` with the method's hooks.
* ``after`` (one-shot after training, OMP-style): ``pretrain`` (dense, cached and shared by every run
  with the same model/data/train/seed, ``dense`` included) → ``prune`` → ``finetune``.
* ``iterative`` (IMP): ``[prune → rewind → train] × levels`` after a dense level 0 (see :func:`_run_levels`).

Everything that can fail on user input (config, names, data files) is checked before the run directory
is created. A finished run (``result.json`` present) is skipped unless ``force``. A run that fails
after it started (a non-finite loss or weight, a pruning-at-init mask with no input->output path) is
recorded in the store with status ``failed`` and its one-line error, and raises.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .. import data as pkdata
from ..diagnostics import check_layer_collapse
from ..distributed import MaskDivergenceError, barrier, init_from_env, is_main, shard_loader, sync_state
from ..errors import ConfigError, LayerCollapseError, NumericError, PrunekitError
from ..methods import METHODS, PruneContext, method_config
from ..sparsity.measure import count_flops, count_params
from ..train import Trainer, TrainConfig, evaluate
from ..train.checkpoint import load_module_state, load_weights
from ..train.cuda_graph import device_refusal as graph_device_refusal
from ..utils.io import atomic_path, atomic_write_text
from .packing import fit_trainer
from .config import (ExperimentConfig, check_model_fits, check_targets, create_model, identity, model_kwargs, pretrain_hash, pretrain_identity,
                     run_hash)
from . import rundir
from .progress import Reporter
from .run_cost import RunCost, add_sparse_phase, mask_flops_ratio
from .store import ResultsStore


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; allowed: cpu, auto")
    return torch.device(name)


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output.root) / cfg.name / f"{cfg.method['name']}-{run_hash(cfg)}"


def store_for(cfg: ExperimentConfig) -> ResultsStore:
    return ResultsStore(cfg.output.store or Path(cfg.output.root) / "results.sqlite")


class Built:
    """Everything a run needs, built (and so validated) before anything is written."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.device = init_from_env(resolve_device(cfg.device))  # cuda:LOCAL_RANK under torchrun
        for phase in (cfg.train, cfg.finetune):
            if phase is not None and phase.cuda_graph and (why := graph_device_refusal(self.device)):
                raise ConfigError(why)
        d = cfg.data
        loaders = pkdata.build_loaders(
            d.name, root=d.root, batch_size=d.batch_size, test_batch_size=d.test_batch_size, seed=cfg.seed,
            device=self.device, augment=d.augment, normalization=d.normalization, split=d.split,
            drop_last=d.drop_last, verify_checksums=d.verify_checksums,
        )
        self.train_loader, self.test_loader, self.spec = loaders
        self.second_loader = loaders.val
        # pruning before training scores whole batches everywhere; a training step takes this process's share
        self.scoring_loader = self.train_loader
        self.train_loader, self.second_loader = shard_loader(self.train_loader), shard_loader(self.second_loader)
        self.input_shape = (self.spec.channels, *self.spec.image_size)
        self.model = self.new_model()
        self.method_cfg = method_config(cfg.method)
        check_targets(self.model, cfg, self.method_cfg)
        self.pruner = METHODS.get(self.method_cfg.name)(self.model, self.method_cfg)
        if cfg.output.tensorboard:
            _summary_writer_class()

    def new_model(self) -> torch.nn.Module:
        seed_everything(self.cfg.seed)
        model = create_model(self.cfg.model.name, model_kwargs(self.cfg, self.spec), self.spec.num_classes)
        check_model_fits(model, self.cfg.model.name, self.cfg.data.name, self.input_shape, self.spec.num_classes)
        return model.to(self.device)


def run_experiment(cfg: ExperimentConfig, force: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume, or skip) one experiment; returns its results row."""
    rep = reporter or Reporter()
    run_dir = run_dir_for(cfg)
    if (finished := rundir.preflight(cfg, run_dir, force)) is not None:  # every file it reads back, unwritten
        rep.message(f"  finished already: {run_dir} (use --force to rerun)")
        return finished
    built = Built(cfg)  # validates names, data files and shapes before anything is written
    rep.message(f"  device: {built.device}{' (device: auto)' if cfg.device == 'auto' else ''}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):  # a second process on this run waits here
        if (finished := rundir.preflight(cfg, run_dir, force)) is not None:  # it finished while we waited
            rep.message(f"  finished already: {run_dir} (use --force to rerun)")
            return finished
        return _run_locked(cfg, built, run_dir, force, rep)


def _locked(directory: Path):
    """Exclusive use of a run or cache directory by this process (rank 0 of a distributed run)."""
    if not is_main():
        return contextlib.nullcontext()
    return rundir.locked(directory, lambda m: print(f"prunekit: {m}", file=sys.stderr, flush=True))


def _run_locked(cfg: ExperimentConfig, built: Built, run_dir: Path, force: bool, rep: Reporter) -> dict[str, Any]:
    result_file = run_dir / "result.json"
    if is_main():  # a distributed run: rank 0 writes every file and the store
        if force:
            rundir.clear(run_dir)
        elif (run_dir / "config.yaml").exists() and not any(run_dir.glob("checkpoint-*.pt")):
            rep.message(f"  {run_dir.name}: redoing it from the start (an earlier attempt stopped before its "
                        f"first checkpoint)")
        rundir.write_config(run_dir, cfg)
    store = store_for(cfg)
    try:
        row, extra = _run_phases(cfg, built, run_dir, rep)
    except (NumericError, LayerCollapseError, MaskDivergenceError) as e:
        if is_main():
            store.record(_row(cfg, built, run_dir, status="failed", error=str(e)))
        raise
    if is_main():
        store.record(row)
    row = {**row, **extra}
    if is_main():
        atomic_write_text(result_file, json.dumps(row, indent=2, default=str))
    barrier()  # later runs read this run's files (the pretraining cache, IMP levels, result.json)
    return row


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("output.tensorboard=true needs the tensorboard package: pip install 'prunekit[tensorboard]'") from None
    return SummaryWriter


def _tensorboard(cfg: ExperimentConfig, directory: Path):
    if not cfg.output.tensorboard:
        return None
    return _summary_writer_class()(log_dir=str(directory / "tensorboard"))


def _fit(built: Built, train_cfg: TrainConfig, pruner, phase: str, directory: Path, rep: Reporter,
         start_step: int = 0) -> dict[str, Any]:
    sync_state(built.model, pruner, built.device)  # rank 0's weights, masks and method state everywhere
    writer = _tensorboard(built.cfg, directory) if is_main() else None

    def log(record: dict[str, Any]) -> None:
        rep.evaluation(record)
        if writer is not None:
            for key in ("train_loss", "test_acc", "test_loss", "lr", "sparsity"):
                if key in record:
                    writer.add_scalar(f"{phase}/{key}", record[key], record["step"])
            writer.flush()

    trainer = Trainer(built.model, built.train_loader, built.test_loader, train_cfg, pruner=pruner,
                      device=built.device, phase=phase, checkpoint_path=directory / f"checkpoint-{phase}.pt",
                      metrics_path=directory / f"metrics-{phase}.jsonl", progress=rep.progress, log=log)
    if start_step and not trainer.checkpoint_path.exists():
        _start_at(trainer, start_step)
    elif trainer.checkpoint_path.exists():
        trainer.prepare()  # loads the checkpoint (once): say where the phase goes on from
        rep.message(f"  resumed {directory.name} ({phase}) at step {trainer.step} of {trainer.total_steps}")
    rep.phase_start(phase, trainer.total_steps, done=trainer.step)
    try:
        summary = fit_trainer(trainer)  # trainer.fit(), or its turn in a pack (`sweep --pack`)
    finally:
        if writer is not None:
            writer.close()
    summary = _best_at_final_sparsity(summary, trainer.history)
    rep.phase_end(phase, summary)
    return summary


def _best_at_final_sparsity(summary: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """``best_acc`` over the evaluations at the phase's final sparsity only (GraNet's "best after the final
    pruning epoch": an epoch before gradual pruning reached its target does not count)."""
    if not history or "sparsity" not in history[-1]:
        return summary
    final = history[-1]["sparsity"]
    accs = [r["test_acc"] for r in history if abs(r.get("sparsity", -1.0) - final) < 1e-9]
    return {**summary, "best_acc": max(accs)}


def _pretrain(cfg: ExperimentConfig, built: Built, rep: Reporter) -> dict[str, Any]:
    """Dense training, cached under ``<root>/_pretrained/<hash>`` and shared between runs."""
    directory = Path(cfg.output.root) / "_pretrained" / pretrain_hash(cfg)
    weights = directory / "model.safetensors"
    summary_file = directory / "summary.json"
    if not (weights.exists() and summary_file.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):  # runs sharing this pretraining train it once, one process at a time
            if not (weights.exists() and summary_file.exists()):
                summary = _fit(built, cfg.train, None, "pretrain", directory, rep)
                if is_main():
                    with atomic_path(weights) as tmp:
                        save_file({k: v.contiguous().cpu() for k, v in built.model.state_dict().items()}, str(tmp))
                    atomic_write_text(summary_file, json.dumps(summary))
                return summary
    load_module_state(built.model, load_weights(weights, built.device), str(weights))
    rep.message(f"  pretrain: reusing {directory}")
    return rundir.read_json(summary_file, fix=f"delete {directory} to recompute it")


def _total_steps(built: Built, train_cfg: TrainConfig) -> int:
    n, unit = train_cfg.length
    return n * len(built.train_loader) if unit == "ep" else n


def _context(built: Built) -> PruneContext:
    return PruneContext(batches=built.scoring_loader, second_batches=built.second_loader,
                        loss_fn=torch.nn.functional.cross_entropy, device=built.device,
                        total_steps=_total_steps(built, built.cfg.train), steps_per_epoch=len(built.train_loader))


def _run_phases(cfg: ExperimentConfig, built: Built, run_dir: Path, rep: Reporter) -> tuple[dict, dict]:
    pruner = built.pruner
    schedule = pruner.schedule
    extra: dict[str, Any] = {}
    wall = 0.0
    cost = RunCost()
    if schedule == "none":
        summary = _pretrain(cfg, built, rep)
        wall = summary["wall_time"]
        cost.add(summary["steps"])
    elif schedule == "after":
        pre = _pretrain(cfg, built, rep)
        cost.add(pre["steps"])
        extra["pretrain_acc"] = pre["final_acc"]
        finetune_cfg = cfg.finetune or cfg.train
        ckpt = run_dir / "checkpoint-finetune.pt"
        ctx = _context(built)
        ctx.total_steps = _total_steps(built, finetune_cfg)
        pruner.setup(ctx)
        if not ckpt.exists():
            t0 = time.perf_counter()
            with rep.task(f"prune: {cfg.method['name']}") as ctx.progress:
                pruner.prune(ctx)
            extra["prune_time"] = time.perf_counter() - t0
            extra["pruned_acc"] = evaluate(built.model, built.test_loader)["acc"]
            if is_main():
                atomic_write_text(run_dir / "prune.json", json.dumps(extra))
        else:
            extra.update(rundir.read_json(run_dir / "prune.json"))
        summary = _fit(built, finetune_cfg, pruner, "finetune", run_dir, rep)
        wall = pre["wall_time"] + extra.get("prune_time", 0.0) + summary["wall_time"]
        add_sparse_phase(cost, pruner, summary["steps"], _flops_ratio(built))
    elif schedule == "iterative":
        _chain_dir(cfg).mkdir(parents=True, exist_ok=True)
        with _locked(_chain_dir(cfg)):  # runs sharing these IMP levels train each level once
            summary, wall, extra = _run_levels(cfg, built, run_dir, rep)
        cost = extra.pop("cost")
    else:
        ckpt = run_dir / "checkpoint-train.pt"
        ctx = _context(built)
        pruner.setup(ctx)
        # "during" methods get on_init too: initial masks (e.g. an ERK start)
        if not ckpt.exists():
            t0 = time.perf_counter()
            with rep.task(f"prune: {cfg.method['name']}" if schedule == "init" else "") as ctx.progress:
                pruner.on_init(ctx)
            extra["prune_time"] = time.perf_counter() - t0
            if schedule == "init":  # before any training time is spent; a cut branch only warns
                check_layer_collapse(built.model, pruner.masks, built.input_shape, raise_error="disconnected")
            if is_main():
                if pruner.search_history():
                    atomic_write_text(run_dir / "search.json", json.dumps(pruner.search_history()))
                atomic_write_text(run_dir / "prune.json", json.dumps(extra))
        else:
            extra.update(rundir.read_json(run_dir / "prune.json"))
        summary = _fit(built, cfg.train, pruner, "train", run_dir, rep)
        wall = extra.get("prune_time", 0.0) + summary["wall_time"]
        cost.add(summary["steps"], _training_flops(built) or _flops_ratio(built))
    if schedule != "none" and is_main():
        pruner.masks.save(run_dir / "masks.safetensors")
    if cfg.output.save_model and is_main():
        with atomic_path(run_dir / "model.safetensors") as tmp:
            save_file({k: v.contiguous().cpu() for k, v in built.model.state_dict().items()}, str(tmp))
    return _row(cfg, built, run_dir, status="finished", summary=summary, wall=wall, cost=cost), extra


def _start_at(trainer: Trainer, step: int) -> None:
    """Begin a phase at ``step`` of its schedule (open_lth ``train(start_step=...)``): the data order and
    the LR continue from there, the optimizer state is fresh."""
    trainer.step = step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        trainer.scheduler.last_epoch = step - 1
        trainer.scheduler.step()


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_level(directory: Path, built: Built, summary: dict[str, Any], extra: dict[str, torch.Tensor] | None = None):
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


def _load_level(directory: Path, built: Built) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = directory / "level.safetensors"
    tensors = load_weights(path, built.device)
    load_module_state(built.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
    built.pruner.masks.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("mask.")},
                                       source=str(directory))
    rewind = {k[7:]: v for k, v in tensors.items() if k.startswith("rewind.")}
    return rundir.read_json(directory / "summary.json", fix=f"delete {directory} to recompute the level"), rewind


def _chain_dir(cfg: ExperimentConfig) -> Path:
    """``<root>/_imp/<hash>``: the IMP levels every run with these settings (but the final sparsity) shares."""
    chain_id = {**pretrain_identity(cfg), "method": {m: v for m, v in cfg.method.items() if m != "sparsity"}}
    digest = hashlib.sha256(json.dumps(chain_id, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(cfg.output.root) / "_imp" / digest


def _run_levels(cfg: ExperimentConfig, built: Built, run_dir: Path, rep: Reporter) -> tuple[dict, float, dict]:
    """IMP levels (open_lth ``lottery/runner.py``): level 0 trains the dense network with ``cfg.train``
    (the shared pretraining unless weights rewind to a step k > 0, which level 0 must record); every
    further level prunes (``pruner.prune_level``), rewinds the weights to step k (or keeps them:
    ``rewind="lr"``) and retrains with ``cfg.train`` from step k. Levels are cached under
    ``<root>/_imp/<hash>/`` keyed by their kept-count history, so runs that differ only in the final
    sparsity share their common levels. Each level is a line of ``levels.jsonl`` in the run directory and,
    except the last (the run's own row), a store row with status ``level``."""
    pruner = built.pruner
    k, mode = pruner.config.rewind_step, pruner.config.rewind
    chain = _chain_dir(cfg)
    rewind = _state_copy(built.model)  # θ0
    pruner.level = 0
    if mode == "weights" and k > 0:
        level0 = chain / "level0"
        if (level0 / "summary.json").exists():
            summary, rewind = _load_level(level0, built)
        else:
            level0.mkdir(parents=True, exist_ok=True)
            summary = _fit(built, cfg.train, pruner, "train", level0, rep)
            if pruner.rewind_state is None:
                raise ConfigError(f"method.rewind_step={k} is past the end of training ({summary['steps']} steps)")
            rewind = pruner.rewind_state
            _save_level(level0, built, summary, rewind)
    else:
        summary = _pretrain(cfg, built, rep)
    store, records, history, tag = store_for(cfg), [], [], "dense"
    plan = pruner.plan()
    cost = RunCost()
    cost.add(summary["steps"])  # level 0: dense
    for level in range(len(plan) + 1):
        if level > 0:
            history.append(plan[level - 1])
            tag = hashlib.sha256(json.dumps(history).encode()).hexdigest()[:10]
            directory = chain / f"level{level}-{tag}"
            pruner.level = level
            if (directory / "summary.json").exists():
                summary, _ = _load_level(directory, built)
                rep.message(f"  IMP level {level}/{len(plan)} (sparsity {pruner.masks.sparsity():.4f}): reusing {directory}")
            else:
                pruner.prune_level(level)
                if mode == "weights":
                    built.model.load_state_dict(rewind)
                pruner.enforce()
                directory.mkdir(parents=True, exist_ok=True)
                rep.context = f"IMP level {level}/{len(plan)}, sparsity {pruner.masks.sparsity():.4f}"
                try:
                    summary = _fit(built, cfg.train, pruner, "train", directory, rep, start_step=k)
                finally:
                    rep.context = ""
                _save_level(directory, built, summary)
            cost.add(summary["steps"] - k, _flops_ratio(built))
        records.append({"level": level, "sparsity": pruner.masks.sparsity(), "nnz": pruner.masks.nnz(),
                        **{key: summary[key] for key in ("final_acc", "best_acc", "steps", "wall_time")},
                        "total_wall_time": sum(r["wall_time"] for r in records) + summary["wall_time"]})
        if is_main():
            atomic_write_text(run_dir / "levels.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        if level < len(plan) and is_main():
            row = _row(cfg, built, run_dir, status="level", summary=summary, wall=records[-1]["total_wall_time"],
                       cost=cost)
            row.update(run_id=f"imp-{chain.name}-L{level}-{tag}", target_sparsity=row["achieved_sparsity"])
            store.record(row)
    return summary, records[-1]["total_wall_time"], {"levels": len(plan), "cost": cost}


def _flops_ratio(built: Built) -> float:
    """Forward FLOPs under the current masks relative to dense."""
    return mask_flops_ratio(built.model, built.input_shape, built.pruner.masks, built.device)


def _training_flops(built: Built) -> float | None:
    """Training FLOPs relative to dense for methods that change masks while training (RigL/GraNet
    convention); None for the others."""
    ratio = getattr(built.pruner, "training_flops_ratio", None)
    return ratio(built.input_shape) if callable(ratio) else None


def run_id(cfg: ExperimentConfig) -> str:
    """The results-store key of a run: recipe name and settings hash (the same settings under two recipes
    are two rows)."""
    return f"{cfg.name}-{run_hash(cfg)}"


def _target_sparsity(cfg: ExperimentConfig, built: Built) -> float:
    """The configured sparsity, else the one the method derives (LAP's ``rates`` x ``round``)."""
    if cfg.method.get("sparsity") is not None:
        return float(cfg.method["sparsity"])
    try:
        return float(built.pruner.target_sparsity())
    except PrunekitError:  # a method without one number as its target (no sparsity configured)
        return 0.0


def _row(cfg: ExperimentConfig, built: Built, run_dir: Path, status: str, summary: dict | None = None,
         wall: float = 0.0, error: str | None = None, cost: RunCost | None = None) -> dict[str, Any]:
    masks = built.pruner.masks if built.pruner.schedule != "none" else None
    params = count_params(built.model, masks)
    flops = count_flops(built.model, built.input_shape, masks, device=built.device)
    summary = summary or {}
    row = {
        "run_id": run_id(cfg),
        "recipe": cfg.name,
        "method": cfg.method["name"],
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "seed": cfg.seed,
        "target_sparsity": _target_sparsity(cfg, built),
        "achieved_sparsity": masks.sparsity() if masks is not None else 0.0,
        "final_acc": summary.get("final_acc"),
        "best_acc": summary.get("best_acc"),
        "wall_time": wall,
        "params": params["params"],
        "nonzero_params": params["nonzero"],
        "flops": flops["flops"],
        "sparse_flops": flops["sparse_flops"],
        # the whole run's training (pretraining, IMP's chain, BiP's bi-level steps) vs one dense training
        "train_flops_ratio": cost.ratio(_total_steps(built, cfg.train)) if cost else _training_flops(built),
        "train_steps": cost.steps if cost else None,
        "status": status,
        "error": error,
        "run_dir": str(run_dir),
        "config": identity(cfg),
    }
    return row


__all__ = ["PrunekitError", "run_experiment", "run_dir_for", "store_for"]
