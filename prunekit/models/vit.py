"""Vision Transformer (Dosovitskiy et al., ICLR 2021) in torchvision's layout and initialisation.

Attention is written out with four ``nn.Linear`` projections (``q``, ``k``, ``v``, ``out``) instead of
``nn.MultiheadAttention``, whose packed ``in_proj_weight`` is a raw Parameter that conv/linear pruning
policies would never see. With ``dim`` d, q/k/v hold exactly the rows of torchvision's ``in_proj_weight``,
so parameter counts match torchvision's ``vit_b_16`` (86,567,656 at 224x224 and 1000 classes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .zoo import MODELS, check_size


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out linear projections."""

    structure_kind = "qkv_attention"  # how prunekit.structure.heads finds its heads (it cannot import the zoo)

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))  # -1: fewer heads after head pruning


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """Patch embedding (strided conv) + class token + learned positions, encoder blocks, LN, linear head."""

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int,
                 num_classes: int, in_channels: int = 3, zero_head: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.conv_proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        tokens = (image_size // patch_size) ** 2 + 1
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self._init(zero_head)

    def _init(self, zero_head: bool) -> None:
        fan_in = self.conv_proj.in_channels * self.patch_size * self.patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        for block in self.blocks:
            att = block.self_attention
            # torchvision draws the packed (3d, d) in_proj_weight with xavier_uniform_: same bound here.
            packed = torch.empty(3 * att.q.in_features, att.q.in_features, device=att.q.weight.device)
            nn.init.xavier_uniform_(packed)
            with torch.no_grad():
                for i, proj in enumerate((att.q, att.k, att.v)):
                    proj.weight.copy_(packed[i * proj.out_features:(i + 1) * proj.out_features])
                    proj.bias.zero_()
                att.out.bias.zero_()  # out.weight keeps nn.Linear's default, as in nn.MultiheadAttention
            for m in block.mlp:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.normal_(m.bias, std=1e-6)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.blocks(x))
        return self.head(x[:, 0])


_VIT_PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021"
_VIT_INIT = ("torchvision VisionTransformer: patch conv trunc-normal std sqrt(1/fan_in); positions N(0, 0.02); "
             "q/k/v xavier-uniform over the packed (3d, d) matrix; MLP xavier-uniform, biases N(0, 1e-6)")


def _vit(name: str, patch: int, dim: int, depth: int, heads: int, mlp_dim: int, num_classes: int,
         in_channels: int, input_size: int, zero_head: bool) -> nn.Module:
    check_size(name, input_size, f"a multiple of the patch size {patch}", input_size % patch == 0)
    return VisionTransformer(input_size, patch, dim, depth, heads, mlp_dim, num_classes, in_channels,
                             zero_head=bool(zero_head))


@MODELS.register(
    "vit_small_patch4", family="vit", input_shape=(3, 32, 32), num_classes=10,
    paper=f"{_VIT_PAPER}; configuration ViT-Lite-7/4 of Hassani et al., Escaping the Big Data Paradigm with "
    "Compact Transformers, 2021",
    source="prunekit (torchvision vision_transformer.py layout, ViT-Lite-7/4 sizes)",
    init=_VIT_INIT + "; head PyTorch default (zero_head=False)",
)
def vit_small_patch4(num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                     zero_head: bool = False) -> nn.Module:
    """A small ViT for 32x32 images: patch 4 (64 tokens + class token), dim 256, depth 7, 4 heads, MLP 512.

    These are the sizes of ViT-Lite-7/4, a published from-scratch CIFAR configuration (3.72M parameters),
    so results can be compared; the head is not zero-initialised, because score-based pruning at init
    (SNIP, magnitude) would otherwise see an all-zero classifier."""
    return _vit("vit_small_patch4", 4, 256, 7, 4, 512, num_classes, in_channels, input_size, zero_head)


@MODELS.register(
    "vit_b16", family="vit", input_shape=(3, 224, 224), num_classes=1000,
    paper=f"{_VIT_PAPER}; used by DPaI (Xiang et al., ICLR 2025) through torchvision vit_b_16",
    source="pytorch/vision torchvision/models/vision_transformer.py (vit_b_16); QuanNguyen-Tri/DPaI main.py",
    init=_VIT_INIT + "; head zero-initialised as torchvision (zero_head=True)",
)
def vit_b16(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, zero_head: bool = True) -> nn.Module:
    """ViT-B/16: patch 16, dim 768, depth 12, 12 heads, MLP 3072 (86,567,656 parameters at 224, 1000 classes)."""
    return _vit("vit_b16", 16, 768, 12, 12, 3072, num_classes, in_channels, input_size, zero_head)
