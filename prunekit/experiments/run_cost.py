"""What a run cost to train: optimizer steps and training FLOPs relative to one dense training.

The RigL/GraNet convention (Evci et al. 2020, appendix H): a training step costs a forward and a backward
pass, 3 x the forward FLOPs, each layer's FLOPs scaled by its mask density. A run's cost is the sum over
everything it trained, in units of one dense step, divided by the steps of one dense training
(``train.duration``):

* dense: 1; pruning at init: the sparse training (DPaI's, SynFlow's scoring passes are not counted);
* during training: the method's own step-by-step count where it keeps one (``training_flops_ratio``:
  RigL/GraNet/GMP/SET, dense-gradient growth steps included), else the final masks' density;
* after training: the dense pretraining (also when it was cached: the run needed it) plus the sparse
  fine-tuning; BiP's bi-level iterations are two dense steps each (the weight step and the mask step each
  take a forward and a backward pass, with dense gradients), so its cost compares with IMP's (the BiP
  paper's claim: 2-7x speed-up over IMP);
* IMP: the whole level chain, each level's retraining at that level's density.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..sparsity.measure import count_flops


@dataclass
class RunCost:
    steps: int = 0  # optimizer updates (a BiP bi-level iteration: 2)
    dense_steps: float = 0.0  # training FLOPs in units of one dense training step

    def add(self, steps: int, flops_ratio: float = 1.0, updates: int = 1) -> None:
        """``steps`` steps of ``updates`` forward+backward passes each, at ``flops_ratio`` of dense FLOPs."""
        self.steps += steps * updates
        self.dense_steps += steps * updates * flops_ratio

    def ratio(self, dense_training_steps: int) -> float | None:
        return self.dense_steps / dense_training_steps if dense_training_steps else None


def mask_flops_ratio(model, input_shape, masks, device) -> float:
    """Forward FLOPs under ``masks`` relative to dense (1.0 without masks)."""
    if masks is None:
        return 1.0
    flops = count_flops(model, input_shape, masks, device=device)
    return flops["sparse_flops"] / flops["flops"] if flops["flops"] else 1.0


def add_sparse_phase(cost: RunCost, pruner, steps: int, ratio: float) -> None:
    """A phase of ``steps`` masked steps; a method with its own two-level step (BiP) pays two dense
    passes for every step at which it updates its mask (:meth:`Pruner.mask_changed_at`)."""
    if getattr(pruner, "train_step", None) is not None:
        bilevel = sum(1 for s in range(1, steps + 1) if pruner.mask_changed_at(s))
        cost.add(bilevel, 1.0, updates=2)
        cost.add(steps - bilevel, ratio)
    else:
        cost.add(steps, ratio)
