"""Cheaper exact second derivatives through convolutions, for Hessian-vector products (GraSP).

PyTorch's double backward of a convolution computes the weight term ``conv_bwd_weight(ggI, gO)`` as a
convolution of the batch-transposed tensors (the batch becomes the channel axis, the whole feature map the
kernel), which oneDNN runs several times slower than a real weight-gradient kernel; the input term is a
transposed convolution through the generic path. :func:`second_order_convs` swaps, for the duration of a
``with`` block, every ``nn.Conv2d`` forward for one whose backward is itself a differentiable function
made of plain ``convolution`` / ``convolution_backward`` calls:

* backward: ``gI, gW = convolution_backward(gO, I, W)``;
* its backward, for incoming ``ggI, ggW``: ``ggO = conv(ggI, W) + conv(I, ggW)``,
  ``gW' = convolution_backward(gO, ggI, W)[weight]``, ``gI' = convolution_backward(gO, I, ggW)[input]``.

and folds every eval-mode ``BatchNorm2d`` that directly follows a convolution into it
(``W * gamma / sqrt(var + eps)``, computed from the original weight inside the graph, so derivatives
are still taken with respect to the model's own parameters). The model itself is never modified. The
results equal PyTorch's own double backward up to float rounding (``tests/test_pai.py`` compares both
in float64); the third derivative is not supported.

:func:`math_attention` (a decorator) runs a function with ``scaled_dot_product_attention`` on its math
kernel: the fused CPU/CUDA attention kernels (flash, memory-efficient, cuDNN) have no double backward,
the math kernel is plain matmul/softmax and differentiates twice. It covers direct calls,
``nn.MultiheadAttention`` and Hugging Face models with ``attn_implementation="sdpa"``, and only for the
duration of the call (GraSP's Hessian-gradient product, ProsPr's meta-gradient).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

_conv_backward = torch.ops.aten.convolution_backward


F_ = TypeVar("F_", bound=Callable)


def math_attention(fn: F_) -> F_:
    """``fn`` with ``scaled_dot_product_attention`` restricted to the math kernel while it runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sdpa_kernel(SDPBackend.MATH):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _conf_args(conf):
    stride, padding, dilation, groups = conf
    return dict(stride=stride, padding=padding, dilation=dilation, transposed=False, output_padding=[0, 0],
                groups=groups)


class _ConvGrad(torch.autograd.Function):
    """``(gI, gW)`` of a convolution, differentiable once more in plain convolution calls."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, gy: Tensor, conf, need_x: bool):
        ctx.conf = conf
        ctx.save_for_backward(x, w, gy)
        gx, gw, _ = _conv_backward(gy, x, w, None, output_mask=[need_x, True, False], **_conf_args(conf))
        return gx, gw

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx: Tensor | None, ggw: Tensor | None):
        x, w, gy = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x, need_w, need_gy = ctx.needs_input_grad[:3]
        g_x = g_w = g_gy = None
        if ggx is not None:
            if need_gy:
                g_gy = F.conv2d(ggx, w, None, stride, padding, dilation, groups)
            if need_w:
                g_w = _conv_backward(gy, ggx, w, None, output_mask=[False, True, False], **_conf_args(ctx.conf))[1]
        if ggw is not None:
            if need_gy:
                t = F.conv2d(x, ggw, None, stride, padding, dilation, groups)
                g_gy = t if g_gy is None else g_gy.add_(t)
            if need_x:
                g_x = _conv_backward(gy, x, ggw, None, output_mask=[True, False, False], **_conf_args(ctx.conf))[0]
        return g_x, g_w, g_gy, None, None


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, conf):
        ctx.conf = conf
        ctx.save_for_backward(x, w)
        stride, padding, dilation, groups = conf
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, w = ctx.saved_tensors
        gx, gw = _ConvGrad.apply(x, w, gy, ctx.conf, ctx.needs_input_grad[0])
        return gx, gw, None


def _supported(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """``{conv name: name of the eval-mode BatchNorm2d applied to its output and nothing else}``."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # untraceable (data-dependent control flow): convolutions are still swapped
        return {}
    modules = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d) or not node.args:
            continue
        bn, src = modules[node.target], node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and _supported(modules.get(src.target)) and not bn.training and bn.track_running_stats
                and bn.running_var is not None):
            pairs[src.target] = node.target
    return pairs


def _conv_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d | None):
    conf = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)

    def forward(x: Tensor) -> Tensor:
        w, b = conv.weight, conv.bias
        if bn is not None:
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = bn.weight * scale
            w = w * scale.view(-1, 1, 1, 1)
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            b = shift if b is None else shift + b * scale
        y = _Conv.apply(x, w, conf)
        return y if b is None else y + b.view(1, -1, 1, 1)

    return forward


@contextlib.contextmanager
def second_order_convs(model: nn.Module, fold_batchnorm: bool = True) -> Iterator[nn.Module]:
    """Within the block, ``model``'s ``nn.Conv2d`` layers (zero padding) run with the double backward
    above and eval-mode Conv→BatchNorm pairs are folded; everything is restored on exit."""
    pairs = _conv_bn_pairs(model) if fold_batchnorm else {}
    modules = dict(model.named_modules())
    patched: list[nn.Module] = []
    try:
        for name, module in modules.items():
            if not _supported(module):
                continue
            bn = modules[pairs[name]] if name in pairs else None
            module.forward = _conv_forward(module, bn)
            patched.append(module)
            if bn is not None:
                bn.forward = nn.Identity.forward.__get__(bn)
                patched.append(bn)
        yield model
    finally:
        for module in patched:
            del module.forward
