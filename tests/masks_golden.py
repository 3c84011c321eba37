"""Masks of every registered method on the contract models, as digests, so a refactor that changes any
mask is caught. ``python -m tests.masks_golden --write`` records ``tests/goldens/masks.json``."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

import prunekit as pk
from prunekit.methods import METHODS, PruneContext

GOLDEN = Path(__file__).parent / "goldens" / "masks.json"


def contract_models() -> dict:
    return {
        "cnn": (lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10)),
            (1, 8, 8)),
        "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                                      nn.Linear(32, 10)), (1, 8, 8)),
    }


def _batches(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def masks_digest(method: str, model_name: str) -> str:
    build, shape = contract_models()[model_name]
    torch.manual_seed(0)
    model = build()
    settings = {} if method == "dense" else {"sparsity": 0.8}
    if method == "random":
        settings["seed"] = 0
    if "update_frequency" in METHODS.get(method).Config.model_fields:
        settings["update_frequency"] = 2
    pruner = pk.create(method, model, **settings)
    ctx = PruneContext(batches=_batches(shape, 4, 0), loss_fn=nn.functional.cross_entropy, total_steps=20,
                       steps_per_epoch=4)
    pruner.setup(ctx)
    if pruner.schedule == "init":
        pruner.on_init(ctx)
    else:
        pruner.prune(ctx)
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for x, y in _batches(shape, 5, 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    h = hashlib.sha256()
    for name, m in pruner.masks.items():
        h.update(name.encode())
        h.update(m.to(torch.uint8).flatten().numpy().tobytes())
    return h.hexdigest()[:16]


def compute() -> dict[str, str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {f"{method}/{model}": masks_digest(method, model) for method in METHODS.names()
                for model in contract_models()}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    else:
        print(json.dumps(compute(), indent=1, sort_keys=True))
