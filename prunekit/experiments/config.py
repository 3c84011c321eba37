"""The typed experiment configuration, loaded from YAML recipes with ``key=value`` overrides.

Unknown keys are rejected with a suggestion, values are type-checked, the ``method`` section is
validated against the named method's own settings model, and the model × dataset × method combination
is checked on a meta-device model (:func:`check_compatible`) so that a grid fails before its first run.
"""
from __future__ import annotations

import copy
import functools
import json
from typing import TYPE_CHECKING, Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import models as pkmodels
from ..data.specs import get_spec
from ..errors import ConfigError, PrunekitError, first_line
from ..modelio import logits_of
from ..methods import MethodConfig, MethodSettings, method_config, method_section
from ..sparsity.targets import resolve_targets
from ..train.config import TrainConfig
from ..utils.hashing import settings_hash
from ..utils.validation import config_error_from
from .paths import check_name

if TYPE_CHECKING:
    from ..data.specs import DatasetSpec


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kwargs: dict[str, Any] = {}


MAX_BATCH = 1 << 20  # samples per batch; far above any real batch, below what an allocation can hold
MAX_SEED = 2**32 - 1  # numpy's seed range; torch's and Python's are wider


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "sklearn_digits"
    root: str | None = None
    batch_size: int = Field(128, gt=0, le=MAX_BATCH)
    test_batch_size: int = Field(1000, gt=0, le=MAX_BATCH)
    augment: bool = True
    normalization: str | None = None
    split: str = "official"
    drop_last: bool = False
    verify_checksums: bool = False  # check the dataset files' official md5/sha256 before reading them


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = "runs"
    store: str | None = None  # default: <root>/results.sqlite
    tensorboard: bool = False
    save_model: bool = True


class ExperimentConfig(BaseModel):
    """One run: model × data × method × training recipe × seed.

    The ``method`` section is validated once, into the named method's own settings model
    (:attr:`method_settings`); :attr:`method` is the section as written (its name and non-default settings).
    """

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    name: str = "experiment"  # the folder under output.root (see paths.check_name)
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = "auto"  # CUDA when present, else the CPU; the runner prints which at the start of a run
    model: ModelSpec
    data: DataSpec = DataSpec()
    method_settings: MethodSettings = Field(method_config({"name": "dense"}), alias="method")
    train: TrainConfig = TrainConfig()
    finetune: TrainConfig | None = None  # after-training methods: default = train
    output: OutputSpec = OutputSpec()
    reference: dict[str, Any] = {}  # published numbers for side-by-side reports
    grid: dict[str, list[Any]] = {}  # `prunekit run` expands it into one run per combination

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("cpu", "cuda", "auto") and not v.startswith("cuda:"):
            raise ValueError("allowed: cpu, cuda, cuda:N, auto")
        return v

    @property
    def method(self) -> dict[str, Any]:
        """The method section as written: ``name`` and the settings that differ from their defaults."""
        return method_section(self.method_settings)


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


MAX_VALUES = 100_000  # far above any real recipe; YAML aliases can make a few lines expand to billions


def _check_size(tree: Any) -> None:
    """ConfigError when ``tree`` holds more than MAX_VALUES values, counted as if aliases were expanded
    (the count stops at the limit, so a "billion laughs" document is rejected in milliseconds)."""
    stack, seen = [tree], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"configuration has more than {MAX_VALUES} values (YAML aliases expanding?); "
                              f"allowed: a recipe of ordinary size")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def build_config(raw: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> ExperimentConfig:
    _check_size([raw, [value for _, value in overrides]])
    tree = copy.deepcopy(raw)
    for key, value in overrides:
        set_dotted(tree, key, value)
    try:
        cfg = ExperimentConfig(**tree)
    except ValidationError as e:
        raise config_error_from(e, ExperimentConfig) from None
    except TypeError as e:
        raise ConfigError(f"configuration is not a mapping: {e}") from None
    check_compatible(cfg)
    return cfg


def model_kwargs(cfg: ExperimentConfig, spec: "DatasetSpec") -> dict[str, Any]:
    """The model's options: the recipe's, plus the dataset's input geometry where the model takes it."""
    kwargs = dict(cfg.model.kwargs)
    classes = kwargs.pop("num_classes", spec.num_classes)
    if classes != spec.num_classes:
        raise ConfigError(f"model.kwargs.num_classes={classes!r} but dataset {cfg.data.name!r} has "
                          f"{spec.num_classes} classes; allowed: {spec.num_classes} or unset")
    allowed = pkmodels.options(cfg.model.name)
    if "in_channels" in allowed:
        kwargs.setdefault("in_channels", spec.channels)
    if "input_size" in allowed:
        kwargs.setdefault("input_size", spec.image_size[0])
    return kwargs


def check_model_fits(model: torch.nn.Module, model_name: str, dataset: str, input_shape: tuple[int, ...],
                     num_classes: int) -> None:
    """A forward pass of two zero inputs of the dataset's shape; ConfigError when the model rejects them
    or predicts a different number of classes."""
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            out = logits_of(model(torch.zeros((2, *input_shape), device=device)))
    except (RuntimeError, TypeError, ValueError) as e:  # a user model's own shape checks raise any of these
        raise ConfigError(
            f"model {model_name!r} does not accept {dataset!r} inputs of shape {tuple(input_shape)}: "
            f"{str(e).splitlines()[0]}; allowed: a model built for {input_shape[0]} input channel(s)"
        ) from None
    finally:
        model.train(was_training)
    if out.shape[-1] != num_classes:
        raise ConfigError(f"model {model_name!r} outputs {out.shape[-1]} classes but {dataset!r} has "
                          f"{num_classes}; allowed: a model with one output per class")


def check_targets(model: torch.nn.Module, cfg: ExperimentConfig, method: MethodConfig) -> None:
    """ConfigError when the method's target policy selects no weight of the model (structured pruning
    of a model without conv layers, a targets glob that matches nothing)."""
    if resolve_targets(method.targets).select(model):
        return
    structure = getattr(method, "structure", "unstructured")
    if structure != "unstructured":
        raise ConfigError(f"method.structure={structure!r} prunes conv {structure}s but model {cfg.model.name!r} has "
                          f"no conv layer; allowed: structure='unstructured', or a convolutional model")
    raise ConfigError(f"method.targets={method.targets!r} selects no weight of model {cfg.model.name!r}; allowed: "
                      f"a policy that matches at least one conv/linear weight")


def create_model(name: str, kwargs: dict[str, Any], num_classes: int) -> torch.nn.Module:
    """``models.create``; a builder that trips over an option's value (a list where it expects a name)
    raises ConfigError naming the options instead of a TypeError."""
    try:
        return pkmodels.create(name, num_classes=num_classes, **kwargs)
    except PrunekitError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"model.kwargs={kwargs!r} not accepted by model {name!r} ({type(e).__name__}: "
                          f"{first_line(e)}); allowed: the options `prunekit list models` shows") from None


@functools.lru_cache(maxsize=16)
def _meta_model(name: str, kwargs_json: str, num_classes: int) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, json.loads(kwargs_json), num_classes)


def check_compatible(cfg: ExperimentConfig) -> None:
    """Model × dataset × method checks that need neither data nor weights: the model is built on the
    meta device (shapes only, no memory), so every run of a grid is checked before the first starts."""
    spec = get_spec(cfg.data.name)
    kwargs = json.dumps(model_kwargs(cfg, spec), sort_keys=True, default=str)
    problem = _fit_problem(cfg.model.name, kwargs, cfg.data.name)
    if problem:
        raise ConfigError(problem)
    check_targets(_meta_model(cfg.model.name, kwargs, spec.num_classes), cfg, cfg.method_settings)


@functools.lru_cache(maxsize=64)
def _fit_problem(model: str, kwargs_json: str, dataset: str) -> str | None:
    """:func:`check_model_fits` on the meta model, once per model x options x dataset (a grid's runs
    share it; a meta forward of a ResNet-50 costs ~70 ms)."""
    spec = get_spec(dataset)
    try:
        check_model_fits(_meta_model(model, kwargs_json, spec.num_classes), model, dataset,
                         (spec.channels, *spec.image_size), spec.num_classes)
    except ConfigError as e:
        return str(e)
    return None


def identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """The settings that define a run's result (not where it is written or what it is compared to)."""
    return cfg.model_dump(mode="json", exclude_defaults=True, exclude={"output", "reference", "grid", "name", "description"})


def run_hash(cfg: ExperimentConfig) -> str:
    return settings_hash(identity(cfg))


def pretrain_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a dense pretraining depends on; shared by every after-training method (and ``dense``)."""
    dump = cfg.model_dump(mode="json", exclude_defaults=True)
    return {k: dump.get(k) for k in ("seed", "device", "model", "data", "train")}


def pretrain_hash(cfg: ExperimentConfig) -> str:
    return settings_hash(pretrain_identity(cfg))


def chain_hash(cfg: ExperimentConfig) -> str:
    """What IMP's level chain depends on: the pretraining's settings and the method's but the final sparsity."""
    chain_id = {**pretrain_identity(cfg), "method": {m: v for m, v in cfg.method.items() if m != "sparsity"}}
    return settings_hash(chain_id)
