"""Every method family in your own training loop: what to call, and when (offline, scikit-learn digits).

    python examples/own_loop_by_family.py            # all families
    python examples/own_loop_by_family.py bip imp    # some

``pruner.step()`` after ``optimizer.step()`` is the whole per-step work of the PaI, magnitude, LAP and
structured methods; the others need one more call, and ``step()`` refuses them in one line naming it:
dynamic sparse training wraps the optimizer (RigL grows from the dense gradients before the step), BiP
owns its bi-level step (``train_step``), IMP runs its levels (``prune_level`` + ``rewind_``).
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.data import build_loaders
from prunekit.train import evaluate

TRAIN, TEST, _ = build_loaders("sklearn_digits", batch_size=64, seed=0)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def train(model, optimizer, epochs: int, pruner=None) -> None:
    """A plain loop; ``pruner.step()`` after each optimizer step keeps pruned weights at zero."""
    for _ in range(epochs):
        for x, y in TRAIN:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if pruner is not None:
                pruner.step()


def sgd(model, lr=0.05):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def pai():
    """Pruning at initialization (SNIP here; GraSP, SynFlow, DPaI, PHEW, NPB alike): prune, then train."""
    model = mlp()
    pruner = pk.create("snip", model, sparsity=0.9)
    pruner.prune(pk.PruneContext(batches=TRAIN))
    train(model, sgd(model), 10, pruner)
    return pruner, model


def dst():
    """Dynamic sparse training (RigL; SET, GMP, GraNet alike): size the schedule, wrap the optimizer."""
    model = mlp()
    epochs = 10
    pruner = pk.create("rigl", model, sparsity=0.9, update_frequency=20)
    pruner.setup(pk.PruneContext(total_steps=epochs * len(TRAIN), steps_per_epoch=len(TRAIN)))
    pruner.on_init(pk.PruneContext())  # the sparse starting masks (ERK)
    optimizer = pruner.wrap(sgd(model))  # its step() runs growth before and enforcement after the update
    train(model, optimizer, epochs)
    return pruner, model


def bip():
    """BiP: dense pretraining, then one ``train_step`` per batch (mask and weights, bi-level)."""
    model = mlp()
    train(model, sgd(model), 5)
    epochs = 5
    pruner = pk.create("bip", model, sparsity=0.9)
    pruner.setup(pk.PruneContext(batches=TRAIN, total_steps=epochs * len(TRAIN), steps_per_epoch=len(TRAIN)))
    pruner.prune()
    optimizer, step = sgd(model, lr=0.01), 0
    for _ in range(epochs):
        for x, y in TRAIN:
            step += 1
            pruner.train_step(x, y, optimizer, step)
    return pruner, model


def imp():
    """IMP with weight rewinding to initialization: train, then per level prune, rewind, retrain."""
    model = mlp()
    pruner = pk.create("imp", model, sparsity=0.9, prune_fraction=0.5)
    pruner.record_rewind_point()  # rewind_step=0: the initialization
    train(model, sgd(model), 5, pruner)
    for level in range(1, len(pruner.plan()) + 1):
        pruner.prune_level(level)
        pruner.rewind_()
        train(model, sgd(model), 5, pruner)
    return pruner, model


def lap():
    """LAP (or MP, OMP): after dense training, prune once, then fine-tune."""
    model = mlp()
    train(model, sgd(model), 5)
    pruner = pk.create("lap", model, sparsity=0.9)
    pruner.prune()
    train(model, sgd(model, lr=0.01), 5, pruner)
    return pruner, model


def structured():
    """Channel pruning: prune whole units after training, fine-tune; export the smaller model."""
    model = mlp()
    train(model, sgd(model), 5)
    pruner = pk.create("structured", model, sparsity=0.5)
    pruner.prune(pk.PruneContext(batches=TRAIN))
    train(model, sgd(model, lr=0.01), 5, pruner)
    return pruner, model


def accuracy(model) -> float:
    return evaluate(model, TEST)["acc"]


FAMILIES = {"pai": pai, "dst": dst, "bip": bip, "imp": imp, "lap": lap, "structured": structured}

if __name__ == "__main__":
    for family in sys.argv[1:] or FAMILIES:
        pruner, model = FAMILIES[family]()
        print(f"{family:<11} {pruner.name:<10} sparsity {pruner.masks.sparsity():.3f}  accuracy {accuracy(model):.2f}%")
