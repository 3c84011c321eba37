"""Shared arguments of ``prunekit export`` and ``prunekit measure``: a zoo model, optional weights and masks."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..sparsity import MaskSet


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name (prunekit list models)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--weights", default=None, help="safetensors state dict (plain, or written by prunekit export)")
    p.add_argument("--masks", default=None, help="mask file written by MaskSet.save / a run")
    p.add_argument("--input-shape", type=int, nargs="+", default=None, metavar="N",
                   help="one sample's shape, e.g. 3 32 32 (default: the model's)")


@dataclass
class Loaded:
    name: str
    model: nn.Module
    masks: MaskSet | None
    input_shape: tuple[int, ...]


def load_model(args) -> Loaded:
    from ..models import create, info
    from ..train.checkpoint import load_module_state, load_weights

    model = create(args.model, num_classes=args.num_classes).eval()
    if args.weights:
        state = load_weights(args.weights)
        if any(k.startswith("model/") for k in state):  # a prunekit export file
            state = {k[len("model/"):]: v for k, v in state.items() if k.startswith("model/")}
        load_module_state(model, state, args.weights)
    masks = MaskSet.load(args.masks, model) if args.masks else None
    if masks is not None:
        masks.apply_()
    shape = tuple(args.input_shape) if args.input_shape else tuple(info(args.model)["input_shape"])
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"--input-shape {shape} is not allowed; allowed: positive sizes, e.g. 3 32 32")
    return Loaded(args.model, model, masks, shape)


def example_batch(loaded: Loaded, n: int = 2) -> torch.Tensor:
    return torch.randn((n, *loaded.input_shape), generator=torch.Generator().manual_seed(0))
