"""The typed experiment configuration, loaded from YAML recipes with ``key=value`` overrides.

Unknown keys are rejected with a suggestion, values are type-checked, and the ``method`` section is
validated against the named method's own settings model.
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from ..methods import method_config
from ..train.config import TrainConfig
from ..utils.validation import config_error_from


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kwargs: dict[str, Any] = {}


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "sklearn_digits"
    root: str | None = None
    batch_size: int = Field(128, gt=0)
    test_batch_size: int = Field(1000, gt=0)
    augment: bool = True
    normalization: str | None = None
    split: str = "official"
    drop_last: bool = False


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = "runs"
    store: str | None = None  # default: <root>/results.sqlite
    tensorboard: bool = False
    save_model: bool = True


class ExperimentConfig(BaseModel):
    """One run: model × data × method × training recipe × seed."""

    model_config = ConfigDict(extra="forbid")

    name: str = "experiment"
    description: str = ""
    seed: int = 0
    device: str = "cpu"
    model: ModelSpec
    data: DataSpec = DataSpec()
    method: dict[str, Any] = {"name": "dense"}
    train: TrainConfig = TrainConfig()
    finetune: TrainConfig | None = None  # after-training methods: default = train
    output: OutputSpec = OutputSpec()
    reference: dict[str, Any] = {}  # published numbers for side-by-side reports
    grid: dict[str, list[Any]] = {}  # `prunekit run` expands it into one run per combination

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "cuda", "auto") and not v.startswith("cuda:"):
            raise ValueError("allowed: cpu, cuda, cuda:N, auto")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: dict[str, Any]) -> dict[str, Any]:
        return method_config(v).model_dump(exclude_defaults=True) | {"name": v["name"]}


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["method.sparsity=0.9", "train.milestones=[80,120]"]`` -> [(key, parsed YAML value)]."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def build_config(raw: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> ExperimentConfig:
    tree = copy.deepcopy(raw)
    for key, value in overrides:
        set_dotted(tree, key, value)
    try:
        return ExperimentConfig(**tree)
    except ValidationError as e:
        raise config_error_from(e, ExperimentConfig) from None
    except TypeError as e:
        raise ConfigError(f"configuration is not a mapping: {e}") from None


def identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """The settings that define a run's result (not where it is written or what it is compared to)."""
    return cfg.model_dump(mode="json", exclude_defaults=True, exclude={"output", "reference", "grid", "name", "description"})


def run_hash(cfg: ExperimentConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def pretrain_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a dense pretraining depends on; shared by every after-training method (and ``dense``)."""
    dump = cfg.model_dump(mode="json", exclude_defaults=True)
    return {k: dump.get(k) for k in ("seed", "device", "model", "data", "train")}


def pretrain_hash(cfg: ExperimentConfig) -> str:
    blob = json.dumps(pretrain_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
