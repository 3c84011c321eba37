"""Running an experiment: resolve, build, chain the phases, write the run directory and the store.

Phases by method schedule (``Pruner.schedule``):

* ``none`` (dense): ``train``.
* ``init`` (pruning at initialization): ``prune`` (``on_init``) → ``train``.
* ``during`` (dynamic sparse training, gradual pruning): ``train`` with the method's hooks.
* ``after`` (one-shot after training, OMP-style): ``pretrain`` (dense, cached and shared by every run
  with the same model/data/train/seed, ``dense`` included) → ``prune`` → ``finetune``.

Everything that can fail on user input (config, names, data files) is checked before the run directory
is created. A finished run (``result.json`` present) is skipped unless ``force``.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from .. import data as pkdata
from .. import models as pkmodels
from ..errors import ConfigError, NumericError, PrunekitError
from ..methods import METHODS, PruneContext, method_config
from ..report.measure import count_flops, count_params
from ..train import Trainer, TrainConfig, evaluate
from ..utils.io import atomic_path, atomic_write_text
from .config import ExperimentConfig, identity, pretrain_hash, run_hash
from .progress import Reporter
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
        self.device = resolve_device(cfg.device)
        d = cfg.data
        loaders = pkdata.build_loaders(
            d.name, root=d.root, batch_size=d.batch_size, test_batch_size=d.test_batch_size, seed=cfg.seed,
            device=self.device, augment=d.augment, normalization=d.normalization, split=d.split,
            drop_last=d.drop_last,
        )
        self.train_loader, self.test_loader, self.spec = loaders
        self.second_loader = loaders.val
        self.input_shape = (self.spec.channels, *self.spec.image_size)
        self.model = self.new_model()
        self.method_cfg = method_config(cfg.method)
        self.pruner = METHODS.get(self.method_cfg.name)(self.model, self.method_cfg)
        if cfg.output.tensorboard:
            _summary_writer_class()

    def new_model(self) -> torch.nn.Module:
        seed_everything(self.cfg.seed)
        kwargs = dict(self.cfg.model.kwargs)
        # the dataset decides the input geometry unless the recipe says otherwise
        allowed = pkmodels.options(self.cfg.model.name)
        if "in_channels" in allowed:
            kwargs.setdefault("in_channels", self.spec.channels)
        if "input_size" in allowed:
            kwargs.setdefault("input_size", self.spec.image_size[0])
        model = pkmodels.create(self.cfg.model.name, num_classes=self.spec.num_classes, **kwargs)
        self._check_input(model)
        return model.to(self.device)

    def _check_input(self, model: torch.nn.Module) -> None:
        try:
            with torch.no_grad():
                model.eval()
                out = model(torch.zeros((2, *self.input_shape)))
                model.train()
        except RuntimeError as e:
            raise ConfigError(
                f"model {self.cfg.model.name!r} does not accept {self.cfg.data.name!r} inputs of shape "
                f"{self.input_shape}: {str(e).splitlines()[0]}"
            ) from None
        if out.shape[-1] != self.spec.num_classes:
            raise ConfigError(
                f"model {self.cfg.model.name!r} outputs {out.shape[-1]} classes but {self.cfg.data.name!r} has "
                f"{self.spec.num_classes}"
            )


def run_experiment(cfg: ExperimentConfig, force: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume, or skip) one experiment; returns its results row."""
    rep = reporter or Reporter()
    run_dir = run_dir_for(cfg)
    result_file = run_dir / "result.json"
    if result_file.exists() and not force:
        rep.message(f"  finished already: {run_dir} (use --force to rerun)")
        return json.loads(result_file.read_text())
    built = Built(cfg)  # validates names, data files and shapes before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    store = store_for(cfg)
    try:
        row, extra = _run_phases(cfg, built, run_dir, rep)
    except NumericError as e:
        store.record(_row(cfg, built, run_dir, status="failed", error=str(e)))
        raise
    store.record(row)
    row = {**row, **extra}
    atomic_write_text(result_file, json.dumps(row, indent=2, default=str))
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


def _fit(built: Built, train_cfg: TrainConfig, pruner, phase: str, directory: Path, rep: Reporter) -> dict[str, Any]:
    writer = _tensorboard(built.cfg, directory)

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
    rep.phase_start(phase, trainer.total_steps)
    try:
        summary = trainer.fit()
    finally:
        if writer is not None:
            writer.close()
    rep.phase_end(phase, summary)
    return summary


def _pretrain(cfg: ExperimentConfig, built: Built, rep: Reporter) -> dict[str, Any]:
    """Dense training, cached under ``<root>/_pretrained/<hash>`` and shared between runs."""
    directory = Path(cfg.output.root) / "_pretrained" / pretrain_hash(cfg)
    weights = directory / "model.safetensors"
    summary_file = directory / "summary.json"
    if weights.exists() and summary_file.exists():
        built.model.load_state_dict(load_file(str(weights), device=str(built.device)))
        rep.message(f"  pretrain: reusing {directory}")
        return json.loads(summary_file.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    summary = _fit(built, cfg.train, None, "pretrain", directory, rep)
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in built.model.state_dict().items()}, str(tmp))
    atomic_write_text(summary_file, json.dumps(summary))
    return summary


def _total_steps(built: Built, train_cfg: TrainConfig) -> int:
    n, unit = train_cfg.length
    return n * len(built.train_loader) if unit == "ep" else n


def _context(built: Built) -> PruneContext:
    return PruneContext(batches=built.train_loader, second_batches=built.second_loader,
                        loss_fn=torch.nn.functional.cross_entropy, device=built.device,
                        total_steps=_total_steps(built, built.cfg.train), steps_per_epoch=len(built.train_loader))


def _run_phases(cfg: ExperimentConfig, built: Built, run_dir: Path, rep: Reporter) -> tuple[dict, dict]:
    pruner = built.pruner
    schedule = pruner.schedule
    extra: dict[str, Any] = {}
    wall = 0.0
    if schedule == "none":
        summary = _pretrain(cfg, built, rep)
        wall = summary["wall_time"]
    elif schedule == "after":
        pre = _pretrain(cfg, built, rep)
        extra["pretrain_acc"] = pre["final_acc"]
        finetune_cfg = cfg.finetune or cfg.train
        ckpt = run_dir / "checkpoint-finetune.pt"
        ctx = _context(built)
        ctx.total_steps = _total_steps(built, finetune_cfg)
        pruner.setup(ctx)
        if not ckpt.exists():
            t0 = time.perf_counter()
            pruner.prune(ctx)
            extra["prune_time"] = time.perf_counter() - t0
            extra["pruned_acc"] = evaluate(built.model, built.test_loader)["acc"]
            atomic_write_text(run_dir / "prune.json", json.dumps(extra))
        else:
            extra.update(json.loads((run_dir / "prune.json").read_text()))
        summary = _fit(built, finetune_cfg, pruner, "finetune", run_dir, rep)
        wall = pre["wall_time"] + extra.get("prune_time", 0.0) + summary["wall_time"]
    else:
        ckpt = run_dir / "checkpoint-train.pt"
        ctx = _context(built)
        pruner.setup(ctx)
        # "during" methods get on_init too: initial masks (e.g. an ERK start)
        if not ckpt.exists():
            t0 = time.perf_counter()
            pruner.on_init(ctx)
            extra["prune_time"] = time.perf_counter() - t0
            atomic_write_text(run_dir / "prune.json", json.dumps(extra))
        else:
            extra.update(json.loads((run_dir / "prune.json").read_text()))
        summary = _fit(built, cfg.train, pruner, "train", run_dir, rep)
        wall = extra.get("prune_time", 0.0) + summary["wall_time"]
    if schedule != "none":
        pruner.masks.save(run_dir / "masks.safetensors")
    if cfg.output.save_model:
        with atomic_path(run_dir / "model.safetensors") as tmp:
            save_file({k: v.contiguous().cpu() for k, v in built.model.state_dict().items()}, str(tmp))
    return _row(cfg, built, run_dir, status="finished", summary=summary, wall=wall), extra


def _row(cfg: ExperimentConfig, built: Built, run_dir: Path, status: str, summary: dict | None = None,
         wall: float = 0.0, error: str | None = None) -> dict[str, Any]:
    masks = built.pruner.masks if built.pruner.schedule != "none" else None
    params = count_params(built.model, masks)
    flops = count_flops(built.model, built.input_shape, masks, device=built.device)
    summary = summary or {}
    row = {
        "run_id": run_hash(cfg),
        "recipe": cfg.name,
        "method": cfg.method["name"],
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "seed": cfg.seed,
        "target_sparsity": float(cfg.method.get("sparsity", 0.0)),
        "achieved_sparsity": masks.sparsity() if masks is not None else 0.0,
        "final_acc": summary.get("final_acc"),
        "best_acc": summary.get("best_acc"),
        "wall_time": wall,
        "params": params["params"],
        "nonzero_params": params["nonzero"],
        "flops": flops["flops"],
        "sparse_flops": flops["sparse_flops"],
        "status": status,
        "error": error,
        "run_dir": str(run_dir),
        "config": identity(cfg),
    }
    return row


__all__ = ["PrunekitError", "run_experiment", "run_dir_for", "store_for"]
