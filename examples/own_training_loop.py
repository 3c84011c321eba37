"""Prune any nn.Module inside your own training loop (runs offline on scikit-learn's digits).

    python examples/own_training_loop.py
"""
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.data import build_loaders
from prunekit.train import evaluate

torch.manual_seed(0)
train, test, spec = build_loaders("sklearn_digits", batch_size=64, seed=0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

for epoch in range(20):  # dense training
    for x, y in train:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
print(f"dense accuracy {evaluate(model, test)['acc']:.2f}%")

pruner = pk.create("magnitude", model, sparsity=0.9)  # global one-shot magnitude pruning
pruner.prune()
for epoch in range(10):  # fine-tune: one call after each optimizer step keeps pruned weights at zero
    for x, y in train:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
print(pruner.report())
print(f"90% sparse accuracy {evaluate(model, test)['acc']:.2f}%")
