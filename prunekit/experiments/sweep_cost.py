"""What a sweep would cost: optimizer steps, training FLOPs and, calibrated on finished runs, time.

Training FLOPs follow the RigL/GraNet convention: a training step costs 3× the dense forward FLOPs of its
batch (forward + backward). Steps come from the dataset's size, the batch size and each phase's length,
so nothing is loaded. A shared dense pretraining is counted once, and not at all when cached. Seconds
are estimated from the seconds per training FLOP of finished runs in the results store (same model and
dataset when there are any, else every finished run); without finished runs the time is unknown.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .. import models as pkmodels
from ..data import get_spec
from ..errors import PrunekitError
from ..methods import METHODS
from ..sparsity.measure import count_flops
from .config import ExperimentConfig, build_config, model_kwargs, pretrain_hash
from .layout import RunPaths
from .runner import store_for
from .store import ResultsStore
from .lifecycles import facts_for
from .sweep import run_status


@dataclass
class RunCost:
    status: str
    steps: int | None  # optimizer steps this run still adds (shared pretraining counted in its first run)
    flops: float | None  # training FLOPs of those steps
    seconds: float | None = None
    extrapolated: bool = False  # seconds from other models' rate (small models overestimate large ones)


@dataclass
class SweepCost:
    runs: list[RunCost]
    calibration: str = "no finished runs in the store to calibrate a time estimate"
    rates: dict[tuple[str, str], float] = field(default_factory=dict)

    def total(self, attr: str, statuses=("pending", "partial")) -> float | None:
        values = [getattr(r, attr) for r in self.runs if r.status in statuses]
        return None if any(v is None for v in values) else sum(values)


def steps_per_epoch(cfg: ExperimentConfig) -> int | None:
    n = get_spec(cfg.data.name).train_size
    if n is None:
        return None
    if cfg.data.split == "granet45k":
        n = int(math.floor(0.9 * n))
    bs = cfg.data.batch_size
    return n // bs if cfg.data.drop_last else math.ceil(n / bs)


def phase_steps(cfg: ExperimentConfig, train_cfg) -> int | None:
    n, unit = train_cfg.length
    if unit == "it":
        return n
    spe = steps_per_epoch(cfg)
    return None if spe is None else n * spe


def phases(cfg: ExperimentConfig, levels: int = 1) -> list[tuple[str, int | None]]:
    """``[(phase, steps)]`` of one run; phase ``pretrain`` is the shared, cacheable dense training."""
    train = phase_steps(cfg, cfg.train)
    steps = {"pretrain": train, "train": train}
    out: list[tuple[str, int | None]] = []
    for phase in facts_for(cfg.method_settings).phases:
        if phase == "levels":
            out += [(f"level{i}", train) for i in range(1, levels + 1)]
        else:
            out.append((phase, steps[phase] if phase in steps else phase_steps(cfg, cfg.finetune or cfg.train)))
    return out


class _Models:
    """Dense forward FLOPs per sample and IMP level counts, one model build per distinct model/data."""

    def __init__(self):
        self.cache: dict[str, Any] = {}

    def model(self, cfg: ExperimentConfig):
        key = json.dumps([cfg.model.model_dump(mode="json"), cfg.data.name], sort_keys=True)
        if key not in self.cache:
            self.cache[key] = self._build(cfg)
        return self.cache[key]

    @staticmethod
    def _build(cfg: ExperimentConfig):
        spec = get_spec(cfg.data.name)
        try:
            model = pkmodels.create(cfg.model.name, num_classes=spec.num_classes, **model_kwargs(cfg, spec))
            flops = count_flops(model, (spec.channels, *spec.image_size))["flops"]
        except (PrunekitError, RuntimeError, TypeError, ValueError):
            return None, None
        return model, flops

    def flops(self, cfg: ExperimentConfig) -> float | None:
        return self.model(cfg)[1]

    def levels(self, cfg: ExperimentConfig) -> int:
        model = self.model(cfg)[0]
        if model is None:
            return 1
        return METHODS.get(cfg.method_settings.name)(model, cfg.method_settings).levels()


def _levels(models: _Models, cfg: ExperimentConfig) -> int:
    return models.levels(cfg) if facts_for(cfg.method_settings).chained else 1


def estimate(configs: list[ExperimentConfig]) -> SweepCost:
    """The cost of running ``configs`` now (finished runs cost nothing; partial ones are counted whole)."""
    models = _Models()
    seen_pretrain: set[tuple[str, str]] = set()
    runs = []
    for cfg in configs:
        status = run_status(cfg)
        if status == "finished":
            runs.append(RunCost(status, 0, 0.0))
            continue
        steps = 0
        for phase, n in phases(cfg, _levels(models, cfg)):
            if phase == "pretrain":
                key = (cfg.output.root, pretrain_hash(cfg))
                cached = RunPaths.of(cfg).pretraining.summary.exists()
                if cached or key in seen_pretrain:
                    continue
                seen_pretrain.add(key)
            steps = None if n is None or steps is None else steps + n
        fwd = models.flops(cfg)
        flops = None if steps is None or fwd is None else 3.0 * fwd * cfg.data.batch_size * steps
        runs.append(RunCost(status, steps, flops))
    cost = SweepCost(runs)
    _calibrate(cost, configs, models)
    return cost


def _calibrate(cost: SweepCost, configs: list[ExperimentConfig], models: _Models) -> None:
    """Seconds per training FLOP from finished runs of the stores these configs write to."""
    per_key: dict[tuple[str, str], list[float]] = {}
    for path in dict.fromkeys(store_for(c).path for c in configs):
        for row in ResultsStore(path).rows("status = 'finished'"):
            try:
                cfg = build_config(json.loads(row["config"]))
                steps = sum(n for _, n in phases(cfg, _levels(models, cfg)))
            except (PrunekitError, TypeError, ValueError):
                continue
            if row.get("flops") and row.get("wall_time") and steps:
                totals = per_key.setdefault((row["model"], row["dataset"]), [0.0, 0.0])
                totals[0] += row["wall_time"]
                totals[1] += 3.0 * row["flops"] * cfg.data.batch_size * steps
    if not per_key:
        return
    cost.rates = {k: s / f for k, (s, f) in per_key.items() if f > 0}
    overall = sum(s for s, _ in per_key.values()) / max(sum(f for _, f in per_key.values()), 1e-30)
    pairs = ", ".join(f"{m} on {d}" for m, d in per_key)
    cost.calibration = f"seconds per training FLOP of the store's finished runs of {pairs}"
    for run, cfg in zip(cost.runs, configs):
        if run.flops is not None:
            rate = cost.rates.get((cfg.model.name, cfg.data.name))
            run.extrapolated = rate is None and run.status != "finished"
            run.seconds = run.flops * (overall if rate is None else rate)
    if any(r.extrapolated for r in cost.runs):
        cost.calibration += "; * = other models' rate, rough (small models overestimate large ones)"
