"""Stacked kernels for packs: K members of one architecture as one model with stacked parameters.

``torch.func.stack_module_state``'s layout (every parameter and buffer as one ``[K, ...]`` tensor) with
the forward of all members in one ``vmap(functional_call(...))``: one batched kernel per layer for the
whole pack instead of K small ones, which is where packing pays on a GPU (a small model's step leaves
most of the device idle; Wortsman et al. and the ``torch.func`` model-ensembling tutorial). Each
member's own parameters, buffers, gradients and optimizer buffers become *views* of its slice of the
stacked tensors, so its method's hooks (in-place mask enforcement, DST drop/grow, optimizer-state
policies) act on the pack directly, and its checkpoints hold its own tensors only
(:func:`~prunekit.train.checkpoint.save_checkpoint` copies views out).

The members' arithmetic is batched, so their losses agree with separate runs to rounding (bmm and
grouped convolutions sum in another order), not bit for bit as the loop kernels do
(``tests/test_pack.py``: 1e-5 relative over 50 steps). Refused (:class:`PackError`): members of
different architectures, models with active dropout (vmap's random draws would not be the run's),
RigL's skipped update under Adam (one shared step counter).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..errors import PackError
from ..modelio import logits_of


def _signature(model: nn.Module) -> tuple:
    return (type(model), tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()),
            tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers()))


def stacked_refusal(trainers: Sequence) -> str | None:
    """Why these trainers cannot share stacked kernels (None: they can)."""
    models = [t.model for t in trainers]
    if len({_signature(m) for m in models}) > 1:
        return "members of different architectures cannot share stacked kernels"
    if any(isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0 for mod in models[0].modules()):
        return "the model has dropout: vmap's random draws would not be each run's own"
    for t in trainers:
        if t.cfg.optimizer != "sgd" and getattr(getattr(t.pruner, "config", None), "skip_optimizer_step", False):
            return "RigL skips the update of its mask-update steps, which one shared Adam step counter cannot do"
    return None


class StackedPack:
    """The stacked parameters and buffers of ``trainers``' models (members re-pointed to their slices)."""

    def __init__(self, trainers: Sequence):
        why = stacked_refusal(trainers)
        if why is not None:
            raise PackError(f"--pack: {why}; allowed: kernels='loop'")
        self.k = len(trainers)
        models = [t.model for t in trainers]
        self.skeleton = models[0]
        self.names = [n for n, _ in self.skeleton.named_parameters()]
        self.params: dict[str, Tensor] = {}
        self.member_params: list[list[nn.Parameter]] = [list(m.parameters()) for m in models]
        with torch.no_grad():
            for i, name in enumerate(self.names):
                own = [mp[i] for mp in self.member_params]
                stacked = torch.stack([p.detach() for p in own]).requires_grad_(own[0].requires_grad)
                self.params[name] = stacked
                for k, p in enumerate(own):
                    p.data = stacked.data[k]  # the member's parameter is now its slice of the pack
            self.buffers: dict[str, Tensor] = {}
            for name, _ in self.skeleton.named_buffers():
                owner, leaf = _owner(models[0], name)
                stacked = torch.stack([_owner(m, name)[0]._buffers[leaf] for m in models])
                self.buffers[name] = stacked
                for k, m in enumerate(models):
                    _owner(m, name)[0]._buffers[leaf] = stacked[k]

    def losses(self, x: Tensor, y: Tensor, label_smoothing: float, autocast) -> Tensor:
        """The K members' losses on their own batches ``x[k]``, ``y[k]`` (one vmapped forward)."""
        skeleton = self.skeleton

        def one(params, buffers, xk, yk):
            out = logits_of(functional_call(skeleton, (params, buffers), (xk,)))
            return F.cross_entropy(out.float(), yk, label_smoothing=label_smoothing)

        run = vmap(one, randomness="error")
        if autocast is not None:
            with autocast():
                return run(self.params, self.buffers, x, y)
        return run(self.params, self.buffers, x, y)

    # --- the members' views of the shared state ----------------------------------------------------
    def link_grads(self, k: int) -> None:
        for name, p in zip(self.names, self.member_params[k]):
            g = self.params[name].grad
            p.grad = None if g is None else g[k]

    def unlink_grads(self, k: int) -> None:
        for p in self.member_params[k]:
            p.grad = None

    def skipped(self, k: int) -> list[int]:
        """Indices of member ``k``'s parameters whose gradient its hooks removed (RigL's skipped update)."""
        return [i for i, p in enumerate(self.member_params[k]) if p.grad is None]

    def link_state(self, optimizer: torch.optim.Optimizer, member_optimizer: torch.optim.Optimizer, k: int) -> None:
        """Member ``k``'s optimizer state as views of the stacked state (shared scalars, like Adam's step)."""
        for name, p in zip(self.names, self.member_params[k]):
            stacked = self.params[name]
            state = optimizer.state.get(stacked)
            if state:
                member_optimizer.state[p] = {key: v[k] if _per_weight(v, stacked) else v for key, v in state.items()}

    def load_state(self, optimizer: torch.optim.Optimizer, member_optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Stack the members' (resumed) optimizer state into ``optimizer``'s."""
        for i, name in enumerate(self.names):
            states = [opt.state.get(own[i]) for opt, own in zip(member_optimizers, self.member_params)]
            if not all(states):
                continue
            shape = self.member_params[0][i].shape
            optimizer.state[self.params[name]] = {
                key: torch.stack([s[key] for s in states]) if isinstance(v, Tensor) and v.shape == shape else v
                for key, v in states[0].items()}

    def _slices(self, optimizer: torch.optim.Optimizer, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        stacked = self.params[self.names[i]]
        state = optimizer.state.get(stacked, {})
        return stacked, {key: v for key, v in state.items() if _per_weight(v, stacked)}

    def snapshot(self, optimizer: torch.optim.Optimizer, k: int, indices: list[int]) -> list:
        out = []
        for i in indices:
            stacked, state = self._slices(optimizer, i)
            out.append((stacked.data[k].clone(), {key: v[k].clone() for key, v in state.items()}))
        return out

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer, k: int, indices: list[int], saved: list) -> None:
        for i, (weights, saved_state) in zip(indices, saved):
            stacked, state = self._slices(optimizer, i)
            stacked.data[k].copy_(weights)
            for key, v in saved_state.items():
                state[key][k].copy_(v)

    @torch.no_grad()
    def zero_member(self, optimizer: torch.optim.Optimizer, k: int) -> None:
        """A failed member's slice set to zero (no NaN or Inf keeps flowing through its kernels)."""
        for i in range(len(self.names)):
            stacked, state = self._slices(optimizer, i)
            stacked.data[k].zero_()
            for v in state.values():
                v[k].zero_()


def _per_weight(v, stacked: Tensor) -> bool:
    return isinstance(v, Tensor) and v.shape == stacked.shape


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), leaf
