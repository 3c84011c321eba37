"""Evaluation: top-1 accuracy and mean loss, accumulated on the device (one sync at the end)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..modelio import logits_of


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             channels_last: bool = False, autocast=None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    correct = loss_sum = count = None
    for x, y in batches:
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if autocast is not None:
            with autocast():
                out = logits_of(model(x))
        else:
            out = logits_of(model(x))
        out = out.float()
        c = (out.argmax(1) == y).sum()
        ls = F.cross_entropy(out, y, reduction="sum")
        n = torch.tensor(y.shape[0], device=y.device)
        correct = c if correct is None else correct + c
        loss_sum = ls if loss_sum is None else loss_sum + ls
        count = n if count is None else count + n
    model.train(was_training)
    if count is None:
        return {"acc": float("nan"), "loss": float("nan")}
    total = int(count)
    return {"acc": 100.0 * int(correct) / total, "loss": float(loss_sum) / total}
