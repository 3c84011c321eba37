"""Lookahead scores (LAP) and the data-dependent statistics of its variants (LAP-act, OBD).

Park, Lee, Mo & Shin, "Lookahead: A Far-sighted Alternative of Magnitude-based Pruning", ICLR 2020;
reference code alinlab/lookahead_pruning (``method/laprune.py``, ``activation.py``, ``method/obd.py``).

The score of W_i[j, k] is ``|W_i[j, k]| · ||W_{i-1}[k, :]|| · ||W_{i+1}[:, j]||``, computed *squared* as
the reference does (same ranking, no square root). A conv unit is a channel: neighbour norms sum over the
other channel dimension and the kernel and broadcast over this layer's kernel. Through a flatten of P
positions (conv -> linear) a channel's previous norm is repeated P times channel-major (the order of
``view(N, -1)``) and its next norm sums the P columns of the linear layer. A missing neighbour (first or
last layer) is a factor 1. LAP-BN multiplies a unit's neighbour norm by its BatchNorm factor squared.
Neighbours: :func:`chain_neighbours` (the reference, also for ResNets) or :func:`residual_neighbours`.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..modelio import call_model, logits_of
from ..sparsity.targets import weight_layout

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout2d,
                 nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.dropout, torch.flatten, F.max_pool1d, F.max_pool2d,
                   F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                   F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_PASS_METHODS = {"relu", "relu_", "flatten", "view", "reshape", "mean", "contiguous", "squeeze"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


@dataclass(frozen=True, eq=False)
class Neighbour:
    """A layer across a unit from the scored layer: ``source`` is the index of a prunable layer,
    another conv/linear module (e.g. a dense projection shortcut), or None for an identity skip
    connection (norm 1 per unit); ``bn`` holds the BatchNorm factors met on the way."""

    source: int | nn.Module | None
    bn: tuple[Tensor, ...] = ()


def bn_factor(bn: nn.Module) -> Tensor:
    """``γ / √(running_var + 1e-10)`` (reference ``BaseModel.get_bn_weights``; the BN bias is ignored)."""
    n = bn.num_features
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones(n)
    var = bn.running_var.detach().float() if bn.running_var is not None else torch.ones(n, device=gamma.device)
    return gamma / torch.sqrt(var + 1e-10)


def chain_neighbours(n: int, bn: Sequence[Tensor | None] | None = None) -> tuple[list, list]:
    """The reference's neighbours: layer i-1 before and i+1 after layer i; ``bn[i]`` is the factor of
    the BatchNorm after layer i (it scales layer i's output units, so it enters both sides of them)."""
    bn = list(bn) if bn is not None else [None] * n
    def f(t: Tensor | None) -> tuple:
        return () if t is None else (t,)
    prev = [[] if i == 0 else [Neighbour(i - 1, f(bn[i - 1]))] for i in range(n)]
    nxt = [[] if i == n - 1 else [Neighbour(i + 1, f(bn[i]))] for i in range(n)]
    return prev, nxt


def reference_bn_factors(model: nn.Module, layers: Sequence[str]) -> list[Tensor | None]:
    """BN factor per prunable layer by the reference's list logic: walking the modules in order, a
    prunable layer appends an empty slot and every BatchNorm overwrites the last slot. In a ResNet
    block with a projection shortcut, the shortcut's BN therefore overwrites the factor of the block's
    last conv (a reference quirk kept for faithful LAP-BN on ResNets)."""
    index = set(layers)
    out: list[Tensor | None] = []
    for name, m in model.named_modules():
        if name in index:
            out.append(None)
        elif isinstance(m, BN_TYPES) and out:
            out[-1] = bn_factor(m)
    return out


def following_bn(model: nn.Module, layers: Sequence[str]) -> list[nn.Module | None]:
    """The BatchNorm that normalizes each layer's output: the first BN after it in module order,
    before any other conv/linear module (used to read activation signs for LAP-act)."""
    found: dict[str, nn.Module | None] = dict.fromkeys(layers)
    last = None
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES):
            last = name
        elif isinstance(m, BN_TYPES) and last in found and found[last] is None:
            found[last] = m
            last = None
    return [found[n] for n in layers]


def residual_neighbours(model: nn.Module, layers: Sequence[str], use_bn: bool = True) -> tuple[list, list]:
    """Neighbours from the model's dataflow graph (torch.fx), for residual networks.

    Walking from a layer's input back (or its output forward) through activations, pooling, flatten,
    dropout and BatchNorm (whose factors are collected when ``use_bn``), every conv/linear module met
    is a neighbour, prunable or not (projection shortcuts count with their own weights). At an addition
    the walk enters each operand, except an operand that also feeds other nodes: that is an identity
    skip connection, a neighbour of norm 1 per unit. So the conv after a residual block sees
    ``||W_conv2[k, :]||² · bn2[k]² + 1`` for channel k, and the block's last conv looks ahead to the
    next block's first conv plus its shortcut (identity: +1, projection: the 1x1 conv's column norm).
    Shared modules and operations other than these raise a ConfigError.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # torch.fx raises many types on untraceable code
        raise ConfigError(f"lookahead='residual' needs a model torch.fx can trace ({type(e).__name__}: {e}); "
                          "allowed: lookahead='chain' for this model") from None
    index = {name: i for i, name in enumerate(layers)}
    nodes: dict[str, torch.fx.Node] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in index:
            if node.target in nodes:
                raise ConfigError(f"lookahead='residual': module {node.target!r} is called twice; allowed: chain")
            nodes[node.target] = node
    missing = [n for n in layers if n not in nodes]
    if missing:
        raise ConfigError(f"lookahead='residual': layer {missing[0]!r} is not called in the traced forward")

    def kind(node: torch.fx.Node) -> tuple[str, object]:
        if node.op == "call_module":
            m = model.get_submodule(node.target)
            if isinstance(m, LAYER_TYPES):
                return "layer", index.get(node.target, m)
            if isinstance(m, BN_TYPES):
                return "bn", bn_factor(m)
            if isinstance(m, _PASS_MODULES) or (isinstance(m, nn.Sequential) and len(m) == 0):
                return "pass", None
        elif node.op == "call_function":
            if node.target in _ADD_FUNCTIONS:
                return "add", None
            if node.target in _PASS_FUNCTIONS:
                return "pass", None
            if node.target is getattr:
                return "meta", None
        elif node.op == "call_method":
            if node.target in _PASS_METHODS:
                return "pass", None
            if node.target in ("size", "dim"):
                return "meta", None
        elif node.op in ("placeholder", "output"):
            return node.op, None
        return "other", None

    def is_skip(node: torch.fx.Node) -> bool:  # a value also used elsewhere reaches the add unchanged
        return sum(kind(u)[0] != "meta" for u in node.users) > 1

    def unsupported(node: torch.fx.Node) -> ConfigError:
        return ConfigError(f"lookahead='residual' cannot look through {node.op} {node.target!r} "
                           f"({node.name}); allowed: lookahead='chain' for this model")

    def back(node: torch.fx.Node, bns: tuple) -> list[Neighbour]:
        k, val = kind(node)
        if k == "layer":
            return [Neighbour(val, bns)]
        if k in ("bn", "pass"):
            return back(node.args[0], bns + (val,) if k == "bn" and use_bn else bns)
        if k == "add":
            out: list[Neighbour] = []
            for arg in node.args:
                if isinstance(arg, torch.fx.Node):
                    out += [Neighbour(None, bns)] if is_skip(arg) else back(arg, bns)
            return out
        if k == "placeholder":
            return []
        raise unsupported(node)

    def forward(node: torch.fx.Node, bns: tuple) -> list[Neighbour]:
        out: list[Neighbour] = []
        for user in node.users:
            k, val = kind(user)
            if k in ("meta", "output"):
                continue
            if k == "add":
                out += [Neighbour(None, bns)] if is_skip(node) else forward(user, bns)
            elif user.args[0] is not node:
                raise unsupported(user)
            elif k == "layer":
                out.append(Neighbour(val, bns))
            elif k in ("bn", "pass"):
                out += forward(user, bns + (val,) if k == "bn" and use_bn else bns)
            else:
                raise unsupported(user)
        return out

    prev = [back(nodes[n].args[0], ()) for n in layers]
    nxt = [forward(nodes[n], ()) for n in layers]
    return prev, nxt


def _fit_in(v: Tensor, n_in: int, where: str) -> Tensor:
    if v.numel() == n_in:
        return v
    if n_in % v.numel() == 0:  # conv -> linear: channel-major flatten of P positions per channel
        return v.repeat_interleave(n_in // v.numel())
    raise ConfigError(f"LAP: {where} has {n_in} inputs, its previous layer {v.numel()} outputs; "
                      "allowed: equal, or a multiple (a flatten)")


def _fit_out(v: Tensor, n_out: int, where: str) -> Tensor:
    if v.numel() == n_out:
        return v
    if v.numel() % n_out == 0:  # conv -> linear: a channel's P positions are consecutive features
        return v.view(n_out, -1).sum(1)
    raise ConfigError(f"LAP: {where} has {n_out} outputs, its next layer {v.numel()} inputs; "
                      "allowed: equal, or a multiple (a flatten)")


class LookaheadScorer:
    """Squared LAP scores of a list of layers (``weights`` in forward order, optional bool ``masks``).

    ``prev`` / ``nxt``: per layer, lists of :class:`Neighbour` (default :func:`chain_neighbours`).
    ``row_scales``: per layer, a factor per output unit applied to the weights before scoring (LAP-act).
    :meth:`set_mask` prunes a layer inside the scorer, so a sequential (forward/backward) pass looks
    ahead through already-pruned layers. Pruned positions score ``-inf``. ``groups``: per layer, the
    convolution groups (a grouped or depthwise conv's weight ``[out, in/g, ...]`` reads, for output unit
    ``o``, the input units of group ``o // (out/g)``: its neighbours' norms are taken per global unit).
    """

    def __init__(self, weights: Sequence[Tensor], masks: Sequence[Tensor] | None = None,
                 prev: list | None = None, nxt: list | None = None,
                 row_scales: Sequence[Tensor | None] | None = None, names: Sequence[str] | None = None,
                 groups: Sequence[int] | None = None, transposed: Sequence[bool] | None = None):
        n = len(weights)
        self.groups = list(groups) if groups is not None else [1] * n
        # weights stored [in, out] (HF Conv1D) are scored in their [out, in] form; scores and masks
        # cross this boundary in the parameter's own layout
        self.transposed = list(transposed) if transposed is not None else [False] * n
        weights = [w.t() if t else w for w, t in zip(weights, self.transposed)]
        if masks is not None:
            masks = [m.t() if t and m is not None else m for m, t in zip(masks, self.transposed)]
        self.names = list(names) if names is not None else [f"layer {i}" for i in range(n)]
        self.masks: list[Tensor | None] = list(masks) if masks is not None else [None] * n
        self.sq: list[Tensor] = []
        for i, w in enumerate(weights):
            # float64: the ranking then does not depend on the reduction order (CPU vs CUDA, layout)
            s = w.detach().to(torch.float64, copy=True)
            if self.masks[i] is not None:
                s.mul_(self.masks[i])
            s.mul_(s)
            if row_scales is not None and row_scales[i] is not None:
                s.mul_(row_scales[i].to(s).pow(2).view(-1, *[1] * (s.dim() - 1)))
            self.sq.append(s)
        if prev is None or nxt is None:
            prev, nxt = chain_neighbours(n)
        self.prev, self.next = prev, nxt
        self._cache: dict[tuple, Tensor] = {}

    def _square(self, source: int | nn.Module) -> Tensor:
        if isinstance(source, int):
            return self.sq[source]
        w = source.weight.detach()
        return (w.t() if weight_layout(source) == "in_out" else w).double().pow(2)

    def _groups(self, source: int | nn.Module) -> int:
        return self.groups[source] if isinstance(source, int) else int(getattr(source, "groups", 1))

    def _norms(self, source: int | nn.Module, axis: int) -> Tensor:
        """Squared norms of the rows (axis 0: output units) or columns (axis 1: input units, one entry
        per global input channel of a grouped conv)."""
        key = (source if isinstance(source, int) else id(source), axis)
        if key not in self._cache:
            s = self._square(source)
            if axis == 1 and self._groups(source) > 1:
                g = self._groups(source)
                per_pair = s.sum(dim=tuple(range(2, s.dim())))  # [out, in/g]
                self._cache[key] = per_pair.view(g, -1, per_pair.shape[1]).sum(1).reshape(-1)
            else:
                self._cache[key] = s.sum(dim=tuple(d for d in range(s.dim()) if d != axis))
        return self._cache[key]

    def prev_factor(self, i: int) -> Tensor | None:
        """Per (global) input unit of layer i: Σ over previous neighbours of their squared row norms."""
        n_in = self.sq[i].shape[1] * self.groups[i]
        total = None
        for nb in self.prev[i]:
            if nb.source is None:
                v = self.sq[i].new_ones(nb.bn[0].numel() if nb.bn else n_in)
            else:
                v = self._norms(nb.source, 0)
            for b in nb.bn:
                v = v * b.to(v).pow(2)
            v = _fit_in(v, n_in, self.names[i])
            total = v if total is None else total + v
        return total

    def next_factor(self, i: int) -> Tensor | None:
        """Per output unit of layer i: Σ over next neighbours of their squared column norms."""
        n_out = self.sq[i].shape[0]
        total = None
        for nb in self.next[i]:
            if nb.source is None:
                v = self.sq[i].new_ones(n_out)
            else:
                v = _fit_out(self._norms(nb.source, 1), n_out, self.names[i])
            for b in nb.bn:
                v = v * b.to(v).pow(2)
            total = v if total is None else total + v
        return total

    def score(self, i: int) -> Tensor:
        s = self.sq[i]
        d = s.dim()
        p, q = self.prev_factor(i), self.next_factor(i)
        if p is not None and self.groups[i] > 1:  # output o reads the inputs of its group
            g, (n_out, per_group) = self.groups[i], s.shape[:2]
            p = p.view(g, 1, per_group).expand(g, n_out // g, per_group).reshape(n_out, per_group)
            out = s * p.view(n_out, per_group, *[1] * (d - 2))
        else:
            out = s * p.view(1, -1, *[1] * (d - 2)) if p is not None else s.clone()
        if q is not None:
            out.mul_(q.view(-1, *[1] * (d - 1)))
        if self.masks[i] is not None:
            out.masked_fill_(~self.masks[i], -torch.inf)
        return out.t() if self.transposed[i] else out

    def set_mask(self, i: int, mask: Tensor) -> None:
        mask = mask.t() if self.transposed[i] else mask
        self.sq[i].mul_(mask)
        self.masks[i] = mask
        self._cache.pop((i, 0), None)
        self._cache.pop((i, 1), None)


def lap_scores(weights: Sequence[Tensor], masks: Sequence[Tensor] | None = None,
               bn: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """Squared LAP scores of a chain of layers (all from the same weights: the ``base`` mode)."""
    prev, nxt = chain_neighbours(len(weights), bn)
    scorer = LookaheadScorer(weights, masks, prev, nxt)
    return [scorer.score(i) for i in range(len(weights))]


def take_samples(batches: Iterable, samples: int | None, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``samples`` samples from ``batches`` (cycled when shorter, the last batch trimmed); None: one pass."""
    left = samples if samples is not None else -1
    while left != 0:
        empty = True
        for x, y in batches:
            empty = False
            if left > 0:
                x, y = x[:left], y[:left]
                left -= len(x)
            yield x.to(device), y.to(device)
            if left == 0:
                return
        if empty:
            raise ConfigError("the training batches are empty; allowed: a loader with at least one batch")
        if samples is None:
            return


def activation_scales(model: nn.Module, sites: Sequence[nn.Module | None], batches: Iterable,
                      samples: int | None) -> list[Tensor | None]:
    """LAP-act row scales (reference ``activation.py`` and ``main.py``): the activation rate of a unit
    is the fraction of samples whose output at ``sites[i]`` (the layer or its BatchNorm) is > 0, i.e.
    whose ReLU fires, measured in eval mode; the scale is √rate for a linear unit and Σ over positions
    of √rate for a conv channel. ``None`` sites (the output layer) get no scale."""
    counts: list[Tensor | None] = [None] * len(sites)

    def hook(i: int):
        def fn(module, inputs, output):
            c = (output.detach() > 0).sum(0)
            counts[i] = c if counts[i] is None else counts[i] + c
        return fn

    handles = [s.register_forward_hook(hook(i)) for i, s in enumerate(sites) if s is not None]
    was_training = model.training
    device = next(model.parameters()).device
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in take_samples(batches, samples, device):
                model(x)
                seen += len(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    scales: list[Tensor | None] = []
    for c in counts:
        if c is None:
            scales.append(None)
            continue
        root = (c.double() / seen).sqrt().float()
        scales.append(root if root.dim() == 1 else root.flatten(1).sum(1))
    return scales


def _per_sample_square_sum(module: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """Σ over samples of the squared per-sample weight gradient, given inputs ``a`` and output grads ``g``."""
    if isinstance(module, nn.Linear) or weight_layout(module) == "in_out":
        if a.dim() != 2:
            raise ConfigError("OBD: Hessians of linear layers need 2-D inputs (batch, features)")
        square = g.pow(2).t() @ a.pow(2)  # [out, in]
        return square.t() if weight_layout(module) == "in_out" else square  # HF Conv1D stores [in, out]
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        groups = module.groups
        u = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # [N, C*k, L]
        u = u.view(u.shape[0], groups, -1, u.shape[-1])  # [N, g, C/g*k, L]: a group reads its own channels
        go = g.flatten(2).view(g.shape[0], groups, -1, u.shape[-1])  # [N, g, out/g, L]
        per_sample = torch.einsum("ngol,ngkl->ngok", go, u)
        return per_sample.pow(2).sum(0).reshape(module.weight.shape)
    raise ConfigError(f"OBD: no Hessian for {type(module).__name__}; allowed: Linear, HF Conv1D and zero-padded "
                      "Conv2d")


def diag_ggn(model: nn.Module, modules: Sequence[nn.Module], batches: Iterable, samples: int | None,
             mode: str = "exact", generator: torch.Generator | None = None) -> list[Tensor]:
    """Diagonal of the Hessian of the mean cross-entropy over ``samples`` training samples, per module.

    Computed as the diagonal of the generalized Gauss-Newton matrix ``Σ_n J_nᵀ (diag p_n - p_n p_nᵀ) J_n``,
    which equals the Hessian diagonal wherever the network is piecewise linear in its inputs to the
    softmax (ReLU, max-pool, eval-mode BatchNorm: all LAP networks), so this is BackPACK's
    ``DiagHessian`` that the reference uses. ``mode="exact"`` back-propagates the C columns of the
    factor ``√p_c (e_c - p)``; ``"mc"`` one sampled column ``e_y - p`` with ``y ~ p`` (unbiased, C times
    cheaper). Per-sample squared gradients are formed exactly (linear: outer products of squares; conv:
    per-sample ``unfold`` products). Eval mode, as the reference folds BN into its running statistics.
    """
    store: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def capture(module, inputs, output):
        store[module] = (inputs[0].detach(), output)

    handles = [m.register_forward_hook(capture) for m in modules]
    acc = [torch.zeros_like(m.weight, dtype=torch.float32) for m in modules]
    was_training = model.training
    device = next(model.parameters()).device
    seen = 0
    try:
        model.eval()
        for x, _ in take_samples(batches, samples, device):
            logits = logits_of(call_model(model, x))
            p = torch.softmax(logits.detach().float(), dim=1)
            eye = torch.eye(p.shape[1], device=p.device)
            if mode == "exact":
                columns = [p[:, c:c + 1].sqrt() * (eye[c] - p) for c in range(p.shape[1])]
            else:
                y = torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1).to(p.device)
                columns = [eye[y] - p]
            outputs = [store[m][1] for m in modules]
            for j, v in enumerate(columns):
                grads = torch.autograd.grad(logits, outputs, grad_outputs=v.to(logits.dtype),
                                            retain_graph=j < len(columns) - 1)
                for k, (m, g) in enumerate(zip(modules, grads)):
                    acc[k] += _per_sample_square_sum(m, store[m][0].float(), g.float())
            seen += len(x)
            store.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [a / seen for a in acc]
