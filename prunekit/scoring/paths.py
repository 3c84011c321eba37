"""Path counting on a linearised network: the "NPB mode" forward of DPaI and the reachability used by
the diagnostics.

Pham et al., "Towards Data-Agnostic Pruning At Initialization: What Makes a Good Sparse Mask?"
(NeurIPS 2023, ``pvh1602/NPB``) and Xiang et al., "Differentiable Pruning at Initialization with
Node-Path Balance Principle" (ICLR 2025, ``QuanNguyen-Tri/DPaI`` ``npb.py: NPB_forward``) count the
input->output paths of a masked network with one forward pass: the input is all ones, every Conv/Linear
uses its binary mask *as its weight* (bias dropped), and normalisation, activations and dropout act as
the identity. The sum of the output is then the number of paths of a plain chain. To keep float32
finite, every Conv/Linear divides its input by the input's maximum and the log of that maximum is added
back: ``log P = log(sum(out)) + sum_l log(max_l)`` (exact for a chain; with residual additions the
rescaling applies to the branch only, an approximation the reference shares). Pooling is left as is
(max-pooling takes a max over path counts, as in the reference).

:class:`PathCounter` patches the modules of a model in place for the duration of a ``with`` block (the
instance's ``forward`` attribute), so it works on any ``nn.Module`` built from Conv/Linear modules,
including the zoo's CNNs and ViT (attention stays as written in the model's forward). A token-id model
(an ``nn.Embedding`` reads the input) is counted from its embedding output (:mod:`prunekit.scoring.tokens`);
its output may be a Hugging Face ``ModelOutput`` (:func:`prunekit.modelio.logits_of`).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import MaskError, ModelError
from ..modelio import call_model, hf_conv1d_type, logits_of
from ..sparsity.targets import weight_layout
from .tokens import input_embeddings, probe_input, summed_lookup, zero_lookup

PATH_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def counted_layer_types() -> tuple[type[nn.Module], ...]:
    """What :class:`PathCounter` counts through: :data:`PATH_LAYERS` and, when transformers is loaded,
    Hugging Face's ``Conv1D`` (a linear layer with its weight stored ``[in, out]``)."""
    conv1d = hf_conv1d_type()
    return PATH_LAYERS + ((conv1d,) if conv1d is not None else ())


def transposed_weights(model: nn.Module, names: Sequence[str]) -> list[bool]:
    """Per weight name: stored ``[in, out]`` (HF ``Conv1D``). Unit bookkeeping (nodes are output units,
    :class:`FlatLayout`) works on the ``[out, in]`` form, so such weights are transposed in and out of it."""
    return [weight_layout(model.get_submodule(n.rsplit(".", 1)[0] if "." in n else "")) == "in_out" for n in names]


def transposed_names(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The names among ``names`` whose weight is stored ``[in, out]``."""
    return [n for n, t in zip(names, transposed_weights(model, names)) if t]


def canonical(tensors: Sequence[Tensor], transposed: Sequence[bool]) -> list[Tensor]:
    """``[out, in, ...]`` views of per-layer tensors (a transposed weight's ``.t()``; an involution)."""
    return [t.t() if tr else t for t, tr in zip(tensors, transposed)]
_ACTIVATIONS = tuple(
    cls for cls in vars(nn.modules.activation).values()
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == nn.modules.activation.__name__
    and cls not in (nn.Module, nn.MultiheadAttention)
)
#: modules that act as the identity in path mode (DPaI: BN, LayerNorm, LogSoftmax, ReLU, Dropout, SiLU,
#: Sigmoid, ...; prunekit extends this to every normalisation, activation and dropout module).
IDENTITY_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd, nn.Identity,
) + _ACTIVATIONS
#: additive embeddings zeroed in path mode (DPaI zeroes ``pos_embedding``; class tokens are zero at
#: initialisation in torchvision's ViT, the one the reference prunes).
ZEROED_PARAMS = ("pos_embedding", "*.pos_embedding", "class_token", "*.class_token", "cls_token", "*.cls_token")


class _Reach(torch.autograd.Function):
    """0/1 in both directions: forward ``x > 0``, backward ``grad > 0``, so gradients mark connectivity
    without overflow or underflow."""

    @staticmethod
    def forward(ctx, x):
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return (g > 0).to(g.dtype)


class _MaxPoolAsAvg(TorchFunctionMode):
    """Max-pooling routes gradient to one element per window; for connectivity every element of the
    window is connected, so max-pooling runs as average pooling (same windows)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if func in _MAX_TO_AVG or name in ("_max_pool1d", "_max_pool2d", "_max_pool3d"):
            dim = 1 if "1d" in name or func is F.max_pool1d else 3 if "3d" in name or func is F.max_pool3d else 2
            return _avg_pool(dim, *args, **kwargs)
        if func in _ADAPTIVE:
            return _ADAPTIVE[func](args[0], args[1] if len(args) > 1 else kwargs["output_size"])
        return func(*args, **kwargs)


_MAX_TO_AVG = {F.max_pool1d, F.max_pool2d, F.max_pool3d}
_ADAPTIVE = {F.adaptive_max_pool1d: F.adaptive_avg_pool1d, F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
             F.adaptive_max_pool3d: F.adaptive_avg_pool3d}


def _avg_pool(dim, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    avg = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dim - 1]
    if return_indices or dilation not in (1, (1,) * dim):
        raise MaskError("connectivity analysis does not support dilated max-pooling or pooling indices")
    return avg(x, kernel_size, stride if stride else kernel_size, padding, ceil_mode, count_include_pad=True)


class PathCounter:
    """Path-mode forward of ``model`` with caller-supplied weights for the layers named in ``names``.

    ``names`` are weight parameter names (``"layer1.0.conv1.weight"``) of Conv/Linear modules; other
    Conv/Linear modules use all-ones weights (dense). Inside ``with counter:``, :meth:`log_paths`
    returns ``log P`` for a list of weight tensors aligned with ``names`` (differentiable w.r.t. them);
    :meth:`reach` returns ``R`` whose gradient w.r.t. each weight is positive exactly where the weight
    lies on an input->output path (``weights`` must be 0/1).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], input_shape: Sequence[int],
                 dtype: torch.dtype = torch.float32, zero_params: Sequence[str] = ZEROED_PARAMS):
        self.model = model
        self.names = list(names)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dtype = dtype
        modules = dict(model.named_modules())
        self._layers: list[nn.Module] = []
        for n in self.names:
            mod = modules.get(n.rsplit(".", 1)[0] if "." in n else "")
            if not isinstance(mod, counted_layer_types()) or mod.weight is None or n.rsplit(".", 1)[-1] != "weight":
                raise MaskError(f"path counting needs Conv/Linear weights; {n!r} is not one")
            self._layers.append(mod)
        self._index = {id(m): i for i, m in enumerate(self._layers)}
        self.token_embeddings = input_embeddings(model, self.input_shape)  # [] unless the input is token ids
        self._zero = [p for pn, p in model.named_parameters() if any(fnmatch.fnmatchcase(pn, g) for g in zero_params)]
        self._weights: list[Tensor] = []
        self._maxes: list[Tensor] = []
        self._mode = "count"
        self._saved: list[tuple[nn.Module, object]] = []
        self._saved_params: list[Tensor] = []
        self._flags: list[tuple[nn.Module, bool]] = []

    # --- patching ------------------------------------------------------------------------------
    def __enter__(self) -> "PathCounter":
        device = next(self.model.parameters()).device
        self.ones = probe_input(self.input_shape, bool(self.token_embeddings), device, self.dtype)
        self._flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()  # identity modules make this irrelevant, except for user modules that check it
        # the fused inference kernels of nn.TransformerEncoderLayer / MultiheadAttention would bypass the
        # patched layer forwards (and mix dtypes) under no_grad
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        reads_input = {id(self.model.get_submodule(n)) for n in self.token_embeddings}
        for mod in self.model.modules():
            if isinstance(mod, counted_layer_types()):
                fwd = self._layer_forward(mod)
            elif isinstance(mod, nn.MultiheadAttention):
                fwd = self._attention_forward(mod)
            elif isinstance(mod, IDENTITY_TYPES):
                fwd = _identity
            elif isinstance(mod, nn.Embedding) and self.token_embeddings:
                fwd = (summed_lookup(lambda m=mod: torch.ones_like(m.weight, dtype=self.dtype))
                       if id(mod) in reads_input else zero_lookup(mod, self.dtype))
            else:
                continue
            self._saved.append((mod, mod.__dict__.get("forward", _MISSING)))
            mod.forward = fwd
        with torch.no_grad():
            self._saved_params = [p.detach().clone() for p in self._zero]
            for p in self._zero:
                p.zero_()
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.mha.set_fastpath_enabled(self._fastpath)
        for mod, old in self._saved:
            if old is _MISSING:
                del mod.forward
            else:
                mod.forward = old
        self._saved.clear()
        with torch.no_grad():
            for p, v in zip(self._zero, self._saved_params):
                p.copy_(v)
        self._saved_params = []
        for m, flag in self._flags:
            m.training = flag

    def _layer_forward(self, mod: nn.Module):
        i = self._index.get(id(mod))
        conv = isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        transposed = weight_layout(mod) == "in_out"  # HF Conv1D: x @ w with w [in, out]
        dense: list[Tensor] = []

        def forward(x: Tensor) -> Tensor:
            if i is not None:
                w = self._weights[i]
            else:
                if not dense:
                    dense.append(torch.ones_like(mod.weight, dtype=x.dtype))
                w = dense[0]
            if self._mode == "reach":
                x = _Reach.apply(x)
            elif self._mode == "count":
                top = x.max()  # not detached, as in the reference: the rescaling is part of the graph
                self._maxes.append(top)
                x = x / top
            if conv:
                return mod._conv_forward(x, w, None)
            return F.linear(x, w.t() if transposed else w)

        return forward

    def _attention_forward(self, mod: nn.MultiheadAttention):
        """``nn.MultiheadAttention`` in path mode, as attention written with Linear layers counts: the query
        and key only weight the softmax (with dense all-ones projections their logits are equal, so the
        weights are uniform), paths run through the value: a dense value projection (its packed weight is
        not a layer), the uniform mix over tokens, then ``out_proj`` (applied functionally by the module,
        so its mask is used here)."""
        out_layer = self._layer_forward(mod.out_proj)
        value_layer = self._dense_linear(mod.embed_dim, mod.vdim)

        def forward(query, key=None, value=None, *args, **kwargs):
            x = query if value is None else value
            if not mod.batch_first and x.dim() == 3:
                x = x.transpose(0, 1)
            v = value_layer(x)
            mixed = v.mean(dim=-2, keepdim=True).expand_as(v) if v.dim() == 3 else v
            out = out_layer(mixed)
            if not mod.batch_first and out.dim() == 3:
                out = out.transpose(0, 1)
            return out, None

        return forward

    def _dense_linear(self, out_features: int, in_features: int):
        """A dense (all-ones) linear layer in the current mode, for projections that are not modules."""
        ones: list[Tensor] = []

        def forward(x: Tensor) -> Tensor:
            if not ones:
                ones.append(torch.ones(out_features, in_features, dtype=x.dtype, device=x.device))
            if self._mode == "reach":
                x = _Reach.apply(x)
            elif self._mode == "count":
                top = x.max()
                self._maxes.append(top)
                x = x / top
            return F.linear(x, ones[0])

        return forward

    # --- evaluation ----------------------------------------------------------------------------
    def _run(self, weights: Sequence[Tensor], mode: str) -> Tensor:
        if len(weights) != len(self._layers):
            raise MaskError(f"path counting got {len(weights)} weights for {len(self._layers)} layers")
        self._weights, self._mode, self._maxes = list(weights), mode, []
        try:
            out = logits_of(call_model(self.model, self.ones))
        finally:
            self._weights = []
        return out

    def check_dense(self, what: str) -> None:
        """Refuse a model whose path count is degenerate with every weight kept (all zero or not finite):
        a mask selected from it would be a choice among ties."""
        dense = [torch.ones(m.weight.shape, device=self.ones.device, dtype=self.dtype) for m in self._layers]
        with torch.no_grad():
            log_p = float(self.log_paths(dense))
        if not math.isfinite(log_p):
            raise ModelError(f"{what}: the path count of the dense network is zero or not finite (log {log_p}): "
                             "a module maps the all-ones input to zero, or the count overflows; path counting "
                             "does not apply to this model")

    def log_paths(self, weights: Sequence[Tensor]) -> Tensor:
        """``log(sum(out)) + sum_l log(max_l)`` with per-layer input rescaling (DPaI ``NPB_objective``)."""
        out = self._run(weights, "count")
        log_p = out.sum().log()
        if self._maxes:
            log_p = log_p + torch.stack(self._maxes).log().sum()
        self._maxes = []
        return log_p

    def log_paths_unscaled(self, weights: Sequence[Tensor]) -> Tensor:
        """``log(sum(out))`` without rescaling: exact also with residual additions while it stays finite
        (use float64)."""
        return self._run(weights, "plain").sum().log()

    def reach(self, weights: Sequence[Tensor]) -> Tensor:
        """Connectivity objective (see the class docstring); max-pooling runs as average pooling."""
        with _MaxPoolAsAvg():
            out = self._run(weights, "reach")
        return _Reach.apply(out).sum()


_MISSING = object()


def _identity(x: Tensor, *args, **kwargs) -> Tensor:
    return x


class FlatLayout:
    """Index bookkeeping that turns per-layer unit counts into a few whole-model tensor ops.

    For weights of shapes ``(out, in, *kernel)`` or ``(out, in)`` concatenated into one flat vector,
    ``node_id`` maps every weight to its output unit (a *node*: a row of a Linear or an output channel of
    a conv) and ``kernel_id`` to its kernel (``(out, in)`` pair of a conv; the weight itself for Linear),
    numbered across layers; ``layer_id`` maps nodes to layers.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], device: torch.device | str = "cpu"):
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.numels = [int(torch.Size(s).numel()) for s in self.shapes]
        self.total = sum(self.numels)
        self.node_counts = [s[0] for s in self.shapes]
        kernel = [1 if len(s) <= 2 else n // (s[0] * s[1]) for s, n in zip(self.shapes, self.numels)]
        self.kernel_counts = [n // k for n, k in zip(self.numels, kernel)]
        self.n_nodes, self.n_kernels = sum(self.node_counts), sum(self.kernel_counts)
        node_first, kernel_first, node_id, kernel_id = [], [], [], []
        offset = unit = kunit = 0
        for n, nodes, kernels, k in zip(self.numels, self.node_counts, self.kernel_counts, kernel):
            row = n // nodes
            node_first.append(offset + torch.arange(nodes, device=device) * row)
            kernel_first.append(offset + torch.arange(kernels, device=device) * k)
            node_id.append(torch.arange(unit, unit + nodes, device=device).repeat_interleave(row))
            kernel_id.append(torch.arange(kunit, kunit + kernels, device=device).repeat_interleave(k))
            offset, unit, kunit = offset + n, unit + nodes, kunit + kernels
        # first and last flat index of every node / kernel: unit counts are differences of one cumsum
        self._node_first = torch.cat(node_first)
        self._node_last = self._node_first + torch.tensor([n // c for n, c in zip(self.numels, self.node_counts)],
                                                          device=device).repeat_interleave(
            torch.tensor(self.node_counts, device=device)) - 1
        self._kernel_first = torch.cat(kernel_first)
        self._kernel_last = self._kernel_first + torch.tensor(kernel, device=device).repeat_interleave(
            torch.tensor(self.kernel_counts, device=device)) - 1
        self.node_id = torch.cat(node_id)
        self.kernel_id = torch.cat(kernel_id)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-layer views of a flat tensor."""
        return [part.view(s) for part, s in zip(torch.split(flat, self.numels), self.shapes)]

    def unit_alive(self, effective: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(node_alive, kernel_alive, count)``: bool per node / kernel, true when it holds an effective
        weight, and the number of effective weights (0-d)."""
        # one running count instead of scatter-adds: units are contiguous runs of the flat vector
        cs = torch.cumsum(effective, 0, dtype=torch.int32)

        def alive(first_idx: Tensor, last_idx: Tensor) -> Tensor:
            before = cs.index_select(0, first_idx) - effective.index_select(0, first_idx).to(torch.int32)
            return cs.index_select(0, last_idx) > before

        return alive(self._node_first, self._node_last), alive(self._kernel_first, self._kernel_last), cs[-1]

    def broadcast(self, per_unit: Tensor, kind: str = "node") -> Tensor:
        """Per-node (or per-kernel) values repeated over their weights (flat)."""
        return per_unit.index_select(0, self.node_id if kind == "node" else self.kernel_id)

    def per_layer(self, alive: Tensor, kind: str = "node") -> list[int]:
        """Count of alive nodes (``kind="node"``) or kernels per layer."""
        counts = self.node_counts if kind == "node" else self.kernel_counts
        return torch.stack([part.sum() for part in alive.split(counts)]).tolist()
