"""Running an experiment: resolve, build, chain the phases, write the run directory and the store.

The phases are the method's lifecycle (:mod:`prunekit.experiments.lifecycles`, looked up by the method's
``schedule``): dense training, pruning at init then training, training with the method's hooks, dense
pretraining then pruning then fine-tuning, or IMP's level chain.

Everything that can fail on user input (config, names, data files) is checked before the run directory
is created. A finished run (``result.json`` present) is skipped unless ``force``. A run that fails
after it started (a non-finite loss or weight, a pruning-at-init mask with no input->output path) is
recorded in the store with status ``failed`` and its one-line error, and raises.
"""
from __future__ import annotations

import contextlib
import json
import random
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .. import data as pkdata
from ..distributed import MaskDivergenceError, barrier, init_from_env, is_main, shard_loader, sync_state
from ..errors import ConfigError, LayerCollapseError, NumericError, PrunekitError
from ..methods import METHODS, PruneContext
from ..sparsity.measure import count_flops, count_params
from ..train import Trainer, TrainConfig
from ..train.checkpoint import load_module_state, load_weights
from ..train.cuda_graph import device_refusal as graph_device_refusal
from ..utils.io import atomic_path, atomic_write_text
from .packing import fit_trainer
from .config import ExperimentConfig, check_model_fits, check_targets, create_model, identity, model_kwargs, run_hash
from . import rundir
from .layout import OutputRoot, PhaseDir, RunPaths
from .lifecycles import LIFECYCLES, lifecycle_facts
from .progress import Reporter
from .result_row import ResultRow
from .run_cost import RunCost, mask_flops_ratio
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
    return RunPaths.of(cfg).path


def store_for(cfg: ExperimentConfig) -> ResultsStore:
    return ResultsStore(cfg.output.store or OutputRoot(Path(cfg.output.root)).store)


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
        self.method_cfg = cfg.method_settings
        check_targets(self.model, cfg, self.method_cfg)
        self.pruner = METHODS.get(self.method_cfg.name)(self.model, self.method_cfg)
        self.lifecycle = LIFECYCLES.get(self.pruner.schedule)
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
    paths = RunPaths.of(cfg)
    if is_main():  # a distributed run: rank 0 writes every file and the store
        if force:
            rundir.clear(paths)
        elif paths.config.exists() and not paths.checkpoints():
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
    row = {**row.as_dict(), **extra}
    if is_main():
        atomic_write_text(paths.result, json.dumps(row, indent=2, default=str))
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
    return _summary_writer_class()(log_dir=str(PhaseDir(directory).tensorboard))


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
                      device=built.device, phase=phase, checkpoint_path=PhaseDir(directory).checkpoint(phase),
                      metrics_path=PhaseDir(directory).metrics(phase), progress=rep.progress, log=log)
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
    shared = RunPaths.of(cfg).pretraining
    directory, weights, summary_file = shared.path, shared.weights, shared.summary
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


def _run_phases(cfg: ExperimentConfig, built: Built, run_dir: Path, rep: Reporter) -> tuple[ResultRow, dict]:
    paths = RunPaths.of(cfg)
    out = built.lifecycle(Run(cfg, built, run_dir, rep))
    if out.sparse and is_main():
        built.pruner.masks.save(paths.masks)
    if cfg.output.save_model and is_main():
        with atomic_path(paths.model) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in built.model.state_dict().items()}, str(tmp))
    return _row(cfg, built, run_dir, status="finished", summary=out.summary, wall=out.wall, cost=out.cost), out.extra


@dataclass
class Run:
    """One run under way as its lifecycle (:mod:`prunekit.experiments.lifecycles`) sees it: the config, what
    was built, the run directory, the reporter, and the runner's phase helpers."""

    cfg: ExperimentConfig
    built: Built
    run_dir: Path
    rep: Reporter

    @property
    def pruner(self):
        return self.built.pruner

    @cached_property
    def store(self) -> ResultsStore:
        return store_for(self.cfg)

    def fit(self, train_cfg: TrainConfig, phase: str, directory: Path | None = None,
            start_step: int = 0) -> dict[str, Any]:
        """Train one phase with the method's hooks (checkpoints and metrics in ``directory``, default the run's)."""
        return _fit(self.built, train_cfg, self.pruner, phase, directory or self.run_dir, self.rep, start_step)

    def pretrain(self) -> dict[str, Any]:
        return _pretrain(self.cfg, self.built, self.rep)

    def context(self, train_cfg: TrainConfig) -> PruneContext:
        """The pruning context of a phase trained with ``train_cfg``."""
        ctx = _context(self.built)
        ctx.total_steps = _total_steps(self.built, train_cfg)
        return ctx

    def flops_ratio(self) -> float:
        return _flops_ratio(self.built)

    def row(self, status: str, **fields: Any) -> ResultRow:
        return _row(self.cfg, self.built, self.run_dir, status=status, **fields)

    def locked(self, directory: Path):
        return _locked(directory)


def _start_at(trainer: Trainer, step: int) -> None:
    """Begin a phase at ``step`` of its schedule (open_lth ``train(start_step=...)``): the data order and
    the LR continue from there, the optimizer state is fresh."""
    trainer.step = step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        trainer.scheduler.last_epoch = step - 1
        trainer.scheduler.step()


def _flops_ratio(built: Built) -> float:
    """Forward FLOPs under the current masks relative to dense."""
    return mask_flops_ratio(built.model, built.input_shape, built.pruner.masks, built.device)


def _training_flops(built: Built) -> float | None:
    """Training FLOPs relative to dense for methods that change masks while training (RigL/GraNet
    convention); None for the others."""
    return built.pruner.training_flops_ratio(built.input_shape)


def run_id(cfg: ExperimentConfig) -> str:
    """The results-store key of a run: recipe name and settings hash (the same settings under two recipes
    are two rows)."""
    return f"{cfg.name}-{run_hash(cfg)}"


def _target_sparsity(cfg: ExperimentConfig, built: Built) -> float:
    """The configured sparsity, else the one the method derives (LAP's ``rates`` x ``round``)."""
    if cfg.method_settings.sparsity:  # 0 (the default): not configured
        return cfg.method_settings.sparsity
    try:
        return float(built.pruner.target_sparsity())
    except PrunekitError:  # a method without one number as its target (no sparsity configured)
        return 0.0


def _row(cfg: ExperimentConfig, built: Built, run_dir: Path, status: str, summary: dict | None = None,
         wall: float = 0.0, error: str | None = None, cost: RunCost | None = None) -> ResultRow:
    masks = built.pruner.masks if lifecycle_facts(built.pruner.schedule).sparse else None
    params = count_params(built.model, masks)
    flops = count_flops(built.model, built.input_shape, masks, device=built.device)
    summary = summary or {}
    return ResultRow(
        run_id=run_id(cfg), recipe=cfg.name, method=cfg.method_settings.name, model=cfg.model.name, dataset=cfg.data.name,
        seed=cfg.seed, target_sparsity=_target_sparsity(cfg, built),
        achieved_sparsity=masks.sparsity() if masks is not None else 0.0,
        final_acc=summary.get("final_acc"), best_acc=summary.get("best_acc"), wall_time=wall,
        params=params["params"], nonzero_params=params["nonzero"], flops=flops["flops"],
        sparse_flops=flops["sparse_flops"],
        train_flops_ratio=cost.ratio(_total_steps(built, cfg.train)) if cost else _training_flops(built),
        train_steps=cost.steps if cost else None, status=status, error=error, run_dir=str(run_dir),
        config=identity(cfg))


__all__ = ["PrunekitError", "run_experiment", "run_dir_for", "store_for"]
