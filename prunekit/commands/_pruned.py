"""Shared arguments of ``prunekit export`` and ``prunekit measure``: a zoo model, optional weights and masks."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from ..data import get_spec
from ..errors import ConfigError, first_line
from ..experiments.config import build_config, create_model, model_kwargs
from ..experiments.layout import RunPaths
from ..experiments.lifecycles import facts_for
from ..models import create, info
from ..sparsity import MaskSet
from ..train.checkpoint import load_module_state, load_weights
from ._args import COUNT, int_in


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name (prunekit list models), or a run directory (its config.yaml gives "
                   "the model and input; its model.safetensors and masks.safetensors are the defaults)")
    p.add_argument("--num-classes", type=COUNT, default=None)
    p.add_argument("--weights", default=None, help="safetensors state dict (plain, or written by prunekit export)")
    p.add_argument("--masks", default=None, help="mask file written by MaskSet.save / a run")
    p.add_argument("--input-shape", type=int_in(1, 65536), nargs="+", default=None, metavar="N",
                   help="one sample's shape, e.g. 3 32 32 (default: the model's)")


@dataclass
class Loaded:
    name: str
    model: nn.Module
    masks: MaskSet | None
    input_shape: tuple[int, ...]


def load_model(args, need_weights: bool = False) -> Loaded:
    """The model (and masks) ``args`` name. From a run directory, a pruned run must have its masks and, with
    ``need_weights``, every run its trained weights: without them the result would silently be a freshly
    initialised or dense model."""
    run = RunPaths.at(args.model)
    if run.config.is_file():
        name, model, shape, pruned = _model_of_run(run)
        args.weights = args.weights or _existing(run.model, need_weights, "--weights FILE")
        args.masks = args.masks or _existing(run.masks, pruned, "--masks FILE")
    else:
        name = args.model
        model = create(name, num_classes=args.num_classes)
        shape = tuple(info(name)["input_shape"])
    model.eval()
    if args.weights:
        state = load_weights(args.weights)
        if any(k.startswith("model/") for k in state):  # a prunekit export file
            state = {k[len("model/"):]: v for k, v in state.items() if k.startswith("model/")}
        load_module_state(model, state, args.weights)
    masks = MaskSet.load(args.masks, model) if args.masks else None
    if masks is not None:
        masks.apply_()
    default, shape = shape, tuple(args.input_shape) if args.input_shape else shape
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"--input-shape {shape} is not allowed; allowed: positive sizes, e.g. 3 32 32")
    loaded = Loaded(name, model, masks, shape)
    if shape != default:
        _check_input(loaded, default)
    return loaded


def _check_input(loaded: Loaded, default: tuple[int, ...]) -> None:
    """ConfigError when the model rejects one batch of ``--input-shape`` (before anything is measured or
    written)."""
    try:
        with torch.no_grad():
            loaded.model(example_batch(loaded, n=1))
    except (RuntimeError, ValueError, IndexError) as e:
        raise ConfigError(f"--input-shape {' '.join(map(str, loaded.input_shape))}: model {loaded.name!r} does not "
                          f"accept it ({first_line(e)}); allowed: the shape it was built for, "
                          f"{' '.join(map(str, default))}") from None


def _existing(path: Path, required: bool = False, flag: str = "") -> str | None:
    if path.is_file():
        return str(path)
    if required:
        raise ConfigError(f"{path}: not found, so the result would not be the run's model; allowed: a finished run "
                          f"(rerun it), or {flag}")
    return None


def _model_of_run(run) -> tuple[str, nn.Module, tuple[int, ...], bool]:
    """The model a run trained (name, a fresh instance with the run's options, one sample's shape, whether
    the method prunes), from its resolved ``config.yaml``; the dataset's geometry comes from its spec (no data
    is read)."""

    try:
        raw = yaml.safe_load(run.config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{run.config}: not a readable run configuration ({type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{run.config}: not a run configuration (a mapping is expected)")
    cfg = build_config(raw)
    spec = get_spec(cfg.data.name)
    model = create_model(cfg.model.name, model_kwargs(cfg, spec), spec.num_classes)

    return cfg.model.name, model, (spec.channels, *spec.image_size), facts_for(cfg.method_settings).sparse


def example_batch(loaded: Loaded, n: int = 2) -> torch.Tensor:
    return torch.randn((n, *loaded.input_shape), generator=torch.Generator().manual_seed(0))
