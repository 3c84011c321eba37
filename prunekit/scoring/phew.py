"""PHEW's biased random walks: Patil & Dovrolis, "PHEW: Constructing Sparse Networks that Learn Fast and
Generalize Well without Training Data", ICML 2021 (code ``ShreyasMalakarjunPatil/PHEW``, ``PHEW/phew.py``
and ``Prune/phew_utils.py``: ``generate_probability``, ``phew_masks``).

The network is walked as a chain of its Conv/Linear layers in execution order (the reference walks its
weight tensors in parameter order; the two agree on the zoo's models). A *unit* is an input/output
channel of a conv or a feature of a Linear. Walks alternate: an even walk starts at an input unit of the
first layer (round robin over them) and goes to the output, an odd walk starts at an output unit of the
last layer (round robin) and goes back to the input. One step through a layer, from unit ``u``:

* forward: the next unit ``o`` with probability ``||K[o, u]||_1 / sum_o' ||K[o', u]||_1``, then a position
  inside the kernel ``K[o, u]`` with probability ``|w| / ||K[o, u]||_1`` (jointly: ``|w|`` over the whole
  column); backward the same with the roles of ``o`` and ``u`` swapped. A zero column (row) is walked
  uniformly, as the reference; a zero kernel is walked uniformly (the reference would divide by zero);
* conv -> Linear (flatten, channel-major): channel ``c`` goes to one of its ``S = in_features / channels``
  features uniformly; back, feature ``f`` goes to channel ``f // S``.

Projection shortcuts (a layer that reads the same tensor as an earlier layer, its *main branch*) follow
the reference's ResNet handling: a backward walk at the shortcut takes it or the main branch's last
layer with probability 1/2 each; a forward walk takes the shortcut with probability 1/2. The reference
makes that forward choice one layer early (``k + random.choice([0, 3])`` at the layer *before* the main
branch's first layer, so a walk that takes the shortcut also skips that layer); ``jump="reference"``
keeps this, ``jump="block_input"`` chooses after that layer, symmetric to the backward walk. Identity
shortcuts are never walked (they carry no weight), as in the reference.

Every weight a walk steps on is kept. The reference stops after the walk during which the budget is
reached (overshooting by up to one walk); here the walks are generated in batches and their weights are
taken in walk order until exactly the budget is kept, so the result is a prefix of the same process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Literal, Sequence

import torch
from torch import Tensor, nn

from ..errors import MaskError
from ..modelio import call_model
from .data import train_mode
from ..sparsity.targets import weight_layout
from .paths import PATH_LAYERS, counted_layer_types
from .tokens import model_probe

Jump = Literal["reference", "block_input"]


@dataclass(frozen=True)
class ChainLayer:
    """One Conv/Linear layer in execution order. ``branch_of``: for a parallel branch (a projection
    shortcut), the index of the first earlier layer that reads the same input tensor; otherwise -1."""

    name: str
    in_units: int
    out_units: int
    kernel: int
    branch_of: int = -1
    conv: bool = True
    transposed: bool = False  # weight stored [in, out] (HF Conv1D): walks and masks use its [out, in] form
    groups: int = 1  # a grouped conv: output o reads the in_units / groups inputs of its group

    @property
    def numel(self) -> int:
        return self.out_units * (self.in_units // self.groups) * self.kernel


def trace_layers(model: nn.Module, input_shape: Sequence[int], skip: Collection[str] = ()) -> list[ChainLayer]:
    """Conv/Linear layers in the order a forward pass of one input (all ones; token ids for a token model)
    calls them (eval mode, no grad), each with its weight parameter name and, for parallel branches, the
    layer it branches from. Layers whose weight is named in ``skip`` (attention queries and keys) are left
    out of the chain."""
    layers = {id(m): n for n, m in model.named_modules()
              if isinstance(m, counted_layer_types()) and isinstance(getattr(m, "weight", None), Tensor)
              and (f"{n}.weight" if n else "weight") not in skip}
    probe = model_probe(model, input_shape)
    calls: list[tuple[nn.Module, object]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0] if args else None)))
               for m in model.modules() if id(m) in layers]
    try:
        with torch.no_grad(), train_mode(model, False):
            call_model(model, probe)
    finally:
        for h in handles:
            h.remove()
    out: list[ChainLayer] = []
    inputs: list[object] = []
    param_names = {id(p): n for n, p in model.named_parameters()}  # a tied weight: the name it has there
    for mod, x in calls:
        name = layers[id(mod)]
        weight_name = param_names[id(mod.weight)]
        if any(c.name == weight_name for c in out):
            raise MaskError(f"{name!r} is called more than once in a forward pass; a chain of layers is needed")
        transposed = weight_layout(mod) == "in_out"
        w = mod.weight.t() if transposed else mod.weight
        groups = int(getattr(mod, "groups", 1))
        branch_of = next((i for i, t in enumerate(inputs) if t is x), -1)
        out.append(ChainLayer(weight_name, int(w.shape[1]) * groups, int(w.shape[0]), int(w[0, 0].numel()), branch_of,
                              isinstance(mod, PATH_LAYERS) and not isinstance(mod, nn.Linear), transposed, groups))
        inputs.append(x)
    return out


def transition_probabilities(weight: Tensor, groups: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's ``generate_probability`` for one weight ``(out, in, *kernel)`` or ``(out, in)``:
    ``forward[u, o]`` = P(next unit o | input unit u), ``backward[o, u]`` = P(previous unit u | output unit
    o), both from kernel L1 norms, and ``kernel[o, u, k]`` = P(position k | kernel (o, u)) (float64).
    A grouped conv (``(out, in / groups, ...)``) connects an output only to its group's inputs: its kernel
    norms are placed in the block-diagonal ``(out, in)`` matrix of the same layer written ungrouped."""
    w = weight.detach().abs().to(torch.float64).reshape(weight.shape[0], weight.shape[1], -1)
    norms = w.sum(-1)
    if groups > 1:
        out, per_group = norms.shape
        full = norms.new_zeros(out, per_group * groups)
        rows = torch.arange(out)
        cols = (rows // (out // groups) * per_group).unsqueeze(1) + torch.arange(per_group)
        full[rows.unsqueeze(1), cols] = norms
        norms = full
    return _rows(norms.t()), _rows(norms), _rows(w)


def _rows(x: Tensor) -> Tensor:
    """Normalise the last dimension to sum 1; an all-zero row becomes uniform."""
    s = x.sum(-1, keepdim=True)
    return torch.where(s > 0, x / torch.where(s > 0, s, 1.0), 1.0 / x.shape[-1])


class PhewWalker:
    """Batched PHEW walks over ``chain`` with weights ``weights`` (same order); ``flat_offsets[i]`` is
    where layer ``i``'s weights start in the flat mask, or None for a layer whose weights are not pruned
    (it is walked through, nothing of it is recorded)."""

    def __init__(self, chain: Sequence[ChainLayer], weights: Sequence[Tensor], flat_offsets: Sequence[int | None],
                 jump: Jump = "reference"):
        self.chain = list(chain)
        self.offsets = list(flat_offsets)
        self.jump = jump
        probs = [transition_probabilities(w, c.groups) for w, c in zip(weights, self.chain)]
        self.fwd, self.bwd, self.pos = (list(p) for p in zip(*probs))
        n = len(self.chain)
        self.nxt_fwd = list(range(1, n + 1))  # after a layer, the next one forward
        self.nxt_bwd = list(range(-1, n - 1))  # and backward
        self.fork_fwd: dict[int, int] = {}  # layer where a forward walk may jump -> the branch
        self.fork_bwd: dict[int, int] = {}  # branch -> its main branch's last layer
        for q, layer in enumerate(self.chain):
            if layer.branch_of < 0:
                continue
            start = layer.branch_of
            if any(c.branch_of >= 0 for c in self.chain[start:q]) or start - 1 in self.fork_fwd:
                raise MaskError(f"phew walks a chain with projection shortcuts; {layer.name!r} shares its input with "
                                f"{self.chain[start].name!r} in another pattern (attention, multi-branch blocks)")
            if q - 1 >= 0:
                self.nxt_fwd[q - 1] = q + 1  # the main branch's last layer skips the branch
            self.nxt_bwd[q] = start - 1
            self.fork_bwd[q] = q - 1
            self.fork_fwd[start - 1] = q
        self._check_links()

    # --- unit spaces ---------------------------------------------------------------------------
    def _link(self, a: int, b: int) -> None:
        """Layer ``a``'s outputs must be layer ``b``'s inputs, or a conv's channels flattened into a Linear."""
        size, into = self.chain[a].out_units, self.chain[b].in_units
        if into != size and not (self.chain[a].conv and not self.chain[b].conv and into % size == 0):
            raise MaskError(f"phew walks a chain of layers: cannot step from {self.chain[a].name!r} ({size} "
                            f"outputs) into {self.chain[b].name!r} ({into} inputs)")

    def _check_links(self) -> None:
        for a, b in enumerate(self.nxt_fwd):
            if b < len(self.chain):
                self._link(a, b)
        for src, q in self.fork_fwd.items():
            if src < 0:
                continue
            self._link(src, q)  # backward walks leave a branch into the layer before its main branch
            if self.jump == "reference" and self.chain[src].in_units != self.chain[q].in_units:
                raise MaskError(f"phew jump='reference': {self.chain[src].name!r} and {self.chain[q].name!r} "
                                f"read different unit counts; use jump='block_input'")

    # --- walks ---------------------------------------------------------------------------------
    def forward_walks(self, seeds: Tensor, gen: torch.Generator) -> Tensor:
        """``(walks, layers)`` flat indices of the weights stepped on (-1: layer not visited / not pruned)."""
        n, w = len(self.chain), seeds.numel()
        rec = torch.full((w, n), -1, dtype=torch.long)
        unit, space = seeds.clone(), torch.full((w,), self.chain[0].in_units, dtype=torch.long)
        nxt = torch.zeros(w, dtype=torch.long)
        if -1 in self.fork_fwd and self.jump == "block_input":
            self._coin(nxt, torch.arange(w), self.fork_fwd[-1], gen)
        for k in range(n):
            if self.jump == "reference" and k in self.fork_fwd:  # decided before stepping on layer k
                self._coin(nxt, (nxt == k).nonzero().squeeze(1), self.fork_fwd[k], gen)
            at = (nxt == k).nonzero().squeeze(1)
            if at.numel() == 0:
                continue
            u = self._enter(unit[at], space[at], k, gen)
            o = torch.multinomial(self.fwd[k][u], 1, generator=gen).squeeze(1)
            rec[at, k] = self._record(k, o, u, gen)
            unit[at], space[at] = o, self.chain[k].out_units
            nxt[at] = self.nxt_fwd[k]
            if self.jump == "block_input" and k in self.fork_fwd:
                self._coin(nxt, at, self.fork_fwd[k], gen)
        return rec

    def backward_walks(self, seeds: Tensor, gen: torch.Generator) -> Tensor:
        """Walks from output units ``seeds`` of the last layer back to the input; as :meth:`forward_walks`."""
        n, w = len(self.chain), seeds.numel()
        rec = torch.full((w, n), -1, dtype=torch.long)
        unit, space = seeds.clone(), torch.full((w,), self.chain[-1].out_units, dtype=torch.long)
        nxt = torch.full((w,), n - 1, dtype=torch.long)
        for k in range(n - 1, -1, -1):
            if k in self.fork_bwd:  # at a branch: take it or the main branch, 1/2 each
                self._coin(nxt, (nxt == k).nonzero().squeeze(1), self.fork_bwd[k], gen)
            at = (nxt == k).nonzero().squeeze(1)
            if at.numel() == 0:
                continue
            o = self._leave(unit[at], space[at], k)
            u = torch.multinomial(self.bwd[k][o], 1, generator=gen).squeeze(1)
            rec[at, k] = self._record(k, o, u, gen)
            unit[at], space[at] = u, self.chain[k].in_units
            nxt[at] = self.nxt_bwd[k]
        return rec

    @staticmethod
    def _coin(nxt: Tensor, idx: Tensor, to: int, gen: torch.Generator) -> None:
        """Send each walker of ``idx`` to layer ``to`` with probability 1/2."""
        flip = torch.rand(idx.numel(), generator=gen) < 0.5
        nxt[idx[flip]] = to

    def _enter(self, unit: Tensor, space: Tensor, k: int, gen: torch.Generator) -> Tensor:
        into = self.chain[k].in_units
        if bool((space == into).all()):
            return unit
        scale = into // space
        return unit * scale + (torch.rand(unit.numel(), generator=gen) * scale).long()

    def _leave(self, unit: Tensor, space: Tensor, k: int) -> Tensor:
        return unit // (space // self.chain[k].out_units)

    def _record(self, k: int, o: Tensor, u: Tensor, gen: torch.Generator) -> Tensor:
        layer = self.chain[k]
        per_group = layer.in_units // layer.groups
        if layer.groups > 1:  # the input's index inside its output's group (the weight's second axis)
            u = u - o // (layer.out_units // layer.groups) * per_group
        if layer.kernel > 1:
            pos = torch.multinomial(self.pos[k][o, u], 1, generator=gen).squeeze(1)
        else:
            pos = torch.zeros_like(o)
        if self.offsets[k] is None:
            return torch.full_like(o, -1)
        return self.offsets[k] + (o * per_group + u) * layer.kernel + pos


def phew_keep(walker: PhewWalker, total: int, keep: int, gen: torch.Generator, batch: int = 64,
              max_batch: int = 16384, patience: int = 10) -> Tensor:
    """Flat bool mask of ``total`` weights keeping exactly ``keep``: the weights stepped on by alternating
    forward/backward walks, in walk order, until the budget is met. Raises MaskError when ``patience``
    batches in a row of ``max_batch`` walk pairs find almost no new weight."""
    kept = torch.zeros(total, dtype=torch.bool)
    n_in, n_out = walker.chain[0].in_units, walker.chain[-1].out_units
    fwd_next = bwd_next = 0
    have, stalls = 0, 0
    while have < keep:
        seeds = torch.arange(batch)
        f = walker.forward_walks((fwd_next + seeds) % n_in, gen)
        b = walker.backward_walks((bwd_next + seeds) % n_out, gen)
        fwd_next, bwd_next = (fwd_next + batch) % n_in, (bwd_next + batch) % n_out
        added = _absorb(kept, torch.stack([f, b.flip(1)], 1).reshape(-1), keep - have)
        have += added
        # a full batch finding (almost) nothing new: the rest is unreachable (zero weights) or nearly so
        stalls = stalls + 1 if batch == max_batch and added < max(1, max_batch // 1024) else 0
        if stalls >= patience:
            raise MaskError(f"phew: the random walks stopped finding new weights at {have} of {keep} kept "
                            f"(the rest have zero or near-zero magnitude); use a higher sparsity or fresh weights")
        per_pair = added / batch
        batch = max_batch if per_pair <= 0 else min(max_batch, max(64, math.ceil((keep - have) / per_pair)))
    return kept


def _absorb(kept: Tensor, seq: Tensor, budget: int) -> int:
    """Keep the first ``budget`` new weights of ``seq`` (walk order); returns how many were added."""
    seq = seq[seq >= 0]
    seq = seq[~kept[seq]]
    if seq.numel() == 0 or budget <= 0:
        return 0
    uniq, inv = torch.unique(seq, return_inverse=True)
    first = torch.full((uniq.numel(),), seq.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inv, torch.arange(seq.numel()), "amin")
    take = seq[first.sort().values[:budget]]
    kept[take] = True
    return take.numel()
