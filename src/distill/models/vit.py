"""Small Vision Transformers for 32x32 images, in plain torch (no timm).

Layout (Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929; DeiT's pre-norm blocks):
a ``patch_size`` x ``patch_size`` convolution cuts the image into (32 / p)^2 patch tokens of width ``dim``
(module ``patch_embed``), a learnable cls token is prepended when ``cls_token`` is set, a learnable position
embedding is added, then ``depth`` pre-norm blocks (``blocks.0`` .. ``blocks.{L-1}``: x + Attn(LN(x)),
x + MLP(LN(x)), MLP ratio 4, GELU), a final LayerNorm (``norm``) and a linear ``head`` on the cls token (or on
the mean of the patch tokens without one).

Conventions of this project (``../shared/methods/dense.md``, "Small ViTs on 32x32 images"): patch size 4 gives
8 x 8 = 64 tokens; "ViT d x L" is width d and L blocks with d / 64 heads (3 heads for d = 192).

Feature taps (``self.feature_taps``), named like the CNNs' so the same methods read them:

* ``f1`` .. ``fS`` (S = ``stages``, default min(4, depth)): the token sequences (B, [1 +] N, d) after the last
  block of each of S equal groups of blocks (ViT 128 x 8: blocks 2/4/6/8, modules ``blocks.1``, ``blocks.3``, ...);
* ``f1_map`` .. ``fS_map``: the same stages' patch tokens as maps (B, d, h, w) with h = w = 32 / p (modules
  ``grids.K``), for methods written for convolutional maps (FitNet, AT, ...);
* ``f0``: the embedded tokens before the first block (``blocks.0:input``), ``f0_map`` their map;
* ``tokens``: the final normalised tokens (``norm``), ``tokens_map`` their map (``grid_out``): per-token
  features for dense heads;
* ``pooled``: the classifier's input (``head:input``), the normalised cls token (or the mean patch token).

``dense=True`` makes ``forward`` return per-token logits as a map (B, K, h, w) from the same ``head`` applied to
every patch token: the per-token head for dense outputs (segmentation students).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "Mlp", "TokenGrid", "VisionTransformer", "vit", "vit_micro", "vit_tiny"]


class Attention(nn.Module):
    """Multi-head self-attention: softmax(Q K^T / sqrt(d_h)) V per head, then a linear projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Linear (d -> r d), GELU, Linear (r d -> d)."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenGrid(nn.Module):
    """The patch tokens of a (B, prefix + h*w, d) sequence as a (B, d, h, w) map (the ``prefix`` cls tokens
    dropped). No parameters: a module only so that a forward hook can tap its output."""

    def __init__(self, prefix: int, grid: int):
        super().__init__()
        self.prefix, self.grid = prefix, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, self.prefix:]
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.grid, self.grid)

    def extra_repr(self) -> str:
        return f"prefix={self.prefix}, grid={self.grid}"


def stage_ends(depth: int, stages: int) -> list[int]:
    """The block index that ends each of ``stages`` equal groups of ``depth`` blocks (8, 4 -> [1, 3, 5, 7])."""
    if not 1 <= stages <= depth:
        raise ValueError(f"ViT stages must be between 1 and depth={depth}, got {stages}")
    return [math.ceil(depth * (k + 1) / stages) - 1 for k in range(stages)]


class VisionTransformer(nn.Module):
    """A ViT for small images; see the module docstring for its layout and feature taps.

    Initialisation as in DeiT/timm: truncated-normal (std 0.02) position embedding, cls token and Linear weights,
    zero biases, unit LayerNorms. Parameters with 10 classes: ViT 128 x 8 (``vit_tiny``) 1.60M, ViT 96 x 4
    (``vit_micro``) 0.46M.
    """

    feature_taps: dict[str, str]

    def __init__(self, num_classes: int = 10, image_size: int = 32, patch_size: int = 4, dim: int = 128,
                 depth: int = 8, heads: int | None = None, mlp_ratio: float = 4.0, cls_token: bool = True,
                 stages: int | None = None, in_channels: int = 3, dense: bool = False):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if heads is None:
            heads = 3 if dim == 192 else max(1, dim // 64)
        self.grid = image_size // patch_size
        self.num_prefix = 1 if cls_token else 0
        self.dim, self.depth, self.heads, self.dense = dim, depth, heads, dense
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.grid ** 2, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.ends = stage_ends(depth, min(4, depth) if stages is None else stages)
        self.grids = nn.ModuleList([TokenGrid(self.num_prefix, self.grid) for _ in range(depth)])
        self.grid_in = TokenGrid(self.num_prefix, self.grid)
        self.norm = nn.LayerNorm(dim)
        self.grid_out = TokenGrid(self.num_prefix, self.grid)
        self.head = nn.Linear(dim, num_classes)
        taps = {"f0": "blocks.0:input", "f0_map": "grid_in", "tokens": "norm", "tokens_map": "grid_out",
                "pooled": "head:input"}
        for k, end in enumerate(self.ends, start=1):
            taps[f"f{k}"] = f"blocks.{end}"
            taps[f"f{k}_map"] = f"grids.{end}"
        self.feature_taps = taps
        self._init()

    def _init(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (+ cls token) with their position embedding, (B, [1 +] N, d)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        self.grid_in(h)
        ends = set(self.ends)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in ends:  # the map taps cost a view; only the stage ends are computed
                self.grids[i](h)
        h = self.norm(h)
        if self.dense:
            return self.head(self.grid_out(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        self.grid_out(h)
        pooled = h[:, 0] if self.cls_token is not None else h.mean(1)
        return self.head(pooled)


def vit(num_classes: int = 10, image_size: int = 32, patch_size: int = 4, dim: int = 128, depth: int = 8,
        heads: int | None = None, mlp_ratio: float = 4.0, cls_token: bool = True, stages: int | None = None,
        in_channels: int = 3, dense: bool = False) -> VisionTransformer:
    """Any small ViT (``arch: vit`` with ``options``); the arguments are :class:`VisionTransformer`'s."""
    return VisionTransformer(num_classes, image_size, patch_size, dim, depth, heads, mlp_ratio, cls_token, stages,
                             in_channels, dense)


def vit_tiny(num_classes: int = 10, patch_size: int = 4, cls_token: bool = True, stages: int = 4,
             dense: bool = False, image_size: int = 32) -> VisionTransformer:
    """ViT 128 x 8 (2 heads), patch 4: the OFA-KD spec's CNN -> ViT student (4 stages = blocks 2/4/6/8)."""
    return VisionTransformer(num_classes, image_size, patch_size=patch_size, dim=128, depth=8, cls_token=cls_token,
                             stages=stages, dense=dense)


def vit_micro(num_classes: int = 10, patch_size: int = 4, cls_token: bool = True, stages: int = 4,
              dense: bool = False, image_size: int = 32) -> VisionTransformer:
    """ViT 96 x 4 (1 head: 96 // 64), patch 4: the cheap CPU student (row 38's ViT width and depth)."""
    return VisionTransformer(num_classes, image_size, patch_size=patch_size, dim=96, depth=4, cls_token=cls_token,
                             stages=stages, dense=dense)
