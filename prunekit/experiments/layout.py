"""Where a run lives on disk: the one place that knows the names of the files and folders prunekit writes.

::

    <root>/results.sqlite                          the results store (``output.store`` may put it elsewhere)
    <root>/_locks/<group>.lock                     a sweep group's lock (runs sharing a cache)
    <root>/_pretrained/<hash>/                     dense pretraining shared by runs (:class:`PretrainPaths`)
    <root>/_imp/<hash>/level0/, level<n>-<tag>/    IMP levels shared by runs (:class:`ChainPaths`)
    <root>/<recipe>/<method>-<hash>/               one run (:class:`RunPaths`)

Each folder a training phase writes into holds ``checkpoint-<phase>.pt``, ``metrics-<phase>.jsonl`` and
``tensorboard/`` (:class:`PhaseDir`). Existing output roots keep working: these names are those of every
earlier version.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import PrunekitError, RunDirError
from .config import ExperimentConfig, chain_hash, pretrain_hash, run_hash

PHASE_ORDER = ("pretrain", "prune", "train", "finetune")  # the order a run's phases train in


class Named:
    """A file or folder of a layout class, its name written once: ``summary = Named("summary.json")``
    reads as ``paths.summary`` (``<path>/summary.json``)."""

    def __init__(self, name: str, doc: str = ""):
        self.name = name
        self.__doc__ = doc or f"``{name}``"

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.path / self.name


@dataclass(frozen=True)
class PhaseDir:
    """A folder training phases write into: a run's, the shared pretraining's, an IMP level's."""

    path: Path

    def checkpoint(self, phase: str) -> Path:
        return self.path / f"checkpoint-{phase}.pt"

    def metrics(self, phase: str) -> Path:
        return self.path / f"metrics-{phase}.jsonl"

    tensorboard = Named("tensorboard")

    def checkpoints(self) -> list[Path]:
        return sorted(self.path.glob(self.checkpoint("*").name))

    def metrics_files(self) -> list[Path]:
        """The metrics files present, in the order their phases train (:data:`PHASE_ORDER`)."""
        rank = {self.metrics(p).name: i for i, p in enumerate(PHASE_ORDER)}
        return sorted(self.path.glob(self.metrics("*").name), key=lambda p: rank.get(p.name, len(rank)))


@dataclass(frozen=True)
class PretrainPaths(PhaseDir):
    """``<root>/_pretrained/<hash>``: the dense pretraining every run with the same model/data/train/seed
    shares (after-training methods, IMP from step 0, ``dense``)."""

    weights = Named("model.safetensors")
    summary = Named("summary.json")

    def complete(self) -> bool:
        return self.weights.exists() and self.summary.exists()


@dataclass(frozen=True)
class LevelPaths(PhaseDir):
    """One IMP level of a chain: its weights, masks and rewind point, and its training summary."""

    state = Named("level.safetensors")
    summary = Named("summary.json")


@dataclass(frozen=True)
class ChainPaths:
    """``<root>/_imp/<hash>``: the IMP levels every run with these settings (but the final sparsity) shares."""

    path: Path

    def level(self, level: int, tag: str = "") -> LevelPaths:
        """Level 0 (the dense training to the rewind step), or level ``level`` keyed by its kept-count history
        ``tag``."""
        return LevelPaths(self.path / ("level0" if level == 0 else f"level{level}-{tag}"))


@dataclass(frozen=True)
class OutputRoot:
    """``output.root``: the runs, the caches they share, the default results store, the sweep locks."""

    path: Path

    store = Named("results.sqlite")

    def lock(self, key: str) -> Path:
        return self.path / "_locks" / f"{key}.lock"

    def pretraining(self, key: str) -> PretrainPaths:
        return PretrainPaths(self.path / "_pretrained" / key)

    def chain(self, key: str) -> ChainPaths:
        return ChainPaths(self.path / "_imp" / key)


@dataclass(frozen=True)
class RunPaths(PhaseDir):
    """A run directory ``<root>/<recipe>/<method>-<hash>`` and the shared folders its run reads and writes.

    :meth:`of` builds it from a run's settings, :meth:`at` from a run directory alone (the report, which has
    the folder a row names): it reads the run's own ``config.yaml`` for the shared folders."""

    root: OutputRoot
    _cfg: ExperimentConfig | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> "RunPaths":
        root = Path(cfg.output.root)
        return cls(root / cfg.name / f"{cfg.method_settings.name}-{run_hash(cfg)}", OutputRoot(root), cfg)

    @classmethod
    def at(cls, run_dir: str | Path) -> "RunPaths":
        run_dir = Path(run_dir)
        return cls(run_dir, OutputRoot(run_dir.parents[1] if len(run_dir.parents) > 1 else run_dir.parent))

    # --- the run's own files ----------------------------------------------------------------------------
    config = Named("config.yaml", "the resolved settings, after a line with their hash "
                   "(:func:`prunekit.experiments.rundir.config_text`)")
    result = Named("result.json", "the finished run's row (and its extra entries): a run with it is skipped "
                   "unless ``--force``")
    prune = Named("prune.json", "what pruning measured (time, accuracy right after), read back when a run "
                  "resumes past pruning")
    search = Named("search.json")
    masks = Named("masks.safetensors")

    @property
    def mask_report(self) -> Path:
        """The per-layer sparsity report :meth:`prunekit.sparsity.MaskSet.save` writes beside the masks."""
        return self.masks.with_suffix(".json")

    model = Named("model.safetensors")
    levels = Named("levels.jsonl")
    report = Named("report", "where ``prunekit report --run`` writes by default")

    def own_files(self) -> list[Path]:
        """What ``--force`` removes before redoing the run (its settings file and the shared caches stay)."""
        return [self.result, self.prune, self.masks, self.mask_report, self.model, self.levels,
                *self.checkpoints(), *self.path.glob(self.metrics("*").name)]

    # --- the shared folders -----------------------------------------------------------------------------
    @functools.cached_property
    def settings(self) -> ExperimentConfig | None:
        """The run's settings: those it was made from, else its ``config.yaml`` (None when that is missing or
        not a valid configuration)."""
        if self._cfg is not None:
            return self._cfg
        try:
            return ExperimentConfig(**yaml.safe_load(self.config.read_text()))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValidationError, TypeError, PrunekitError):
            return None

    @property
    def pretraining(self) -> PretrainPaths:
        """The dense pretraining this run shares with every run of the same model/data/train/seed."""
        return self.root.pretraining(pretrain_hash(self._needs_settings()))

    @property
    def chain(self) -> ChainPaths:
        """The IMP level chain this run shares with every run of its settings but the final sparsity."""
        return self.root.chain(chain_hash(self._needs_settings()))

    def continues_pretraining(self) -> bool:
        """Whether the run's training goes on from the shared pretraining (``dense``: it is the whole run;
        after-training methods: it is their first phase)."""
        from .lifecycles import facts_for  # here, not at the top: the lifecycles import this module

        cfg = self.settings
        return cfg is not None and facts_for(cfg.method_settings).continues_pretraining

    def curve_files(self) -> list[Path]:
        """The metrics files of the run in training order, its shared pretraining's first when it went on from it."""
        shared = [self.pretraining.metrics("pretrain")] if self.continues_pretraining() else []
        return [p for p in shared if p.is_file()] + self.metrics_files()

    def _needs_settings(self) -> ExperimentConfig:
        if self.settings is None:
            raise RunDirError(f"{self.config}: missing or not a valid configuration, so the folders this run "
                              f"shares are unknown; allowed: a run directory prunekit wrote")
        return self.settings
