"""``prunekit targets MODEL``: what a target policy prunes in a model and what it keeps dense, and why."""
from __future__ import annotations

import json

import torch

from ..errors import ConfigError
from ..models import create
from ..sparsity.targets import resolve_targets, targets_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "targets", help="list a model's parameters: pruned or kept dense, with the reason and the setting")
    p.add_argument("model", help="a registered model, 'package.module:factory', or 'hf:<Architecture>'")
    p.add_argument("--kwargs", default="{}", help="the model's options as JSON, e.g. '{\"num_hidden_layers\": 2}'")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--targets", default="default",
                   help="a preset name or a JSON mapping of targets fields, e.g. '{\"embeddings\": true}'")
    p.add_argument("--dense-only", action="store_true", help="list only what is kept dense")
    p.set_defaults(func=cmd_targets)


def _json_arg(flag: str, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag}={text!r} is not JSON ({e.msg}); allowed: a JSON mapping") from None


def cmd_targets(args) -> int:

    kwargs = _json_arg("--kwargs", args.kwargs)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--kwargs={args.kwargs!r} is not a JSON mapping")
    spec = args.targets if not args.targets.lstrip().startswith("{") else _json_arg("--targets", args.targets)
    policy = resolve_targets(spec)
    with torch.device("meta"):  # shapes only
        model = create(args.model, num_classes=args.num_classes, **kwargs)
    print(targets_table(policy.explain(model), dense_only=args.dense_only))
    return 0
