"""Overlapping patch embedding (SegFormer's Mix Transformer): shared by the mini-MiT segmentation models and
TransKD's extra embeddings (EA_i)."""

from __future__ import annotations

import torch
from torch import nn


class OverlapPatchEmbed(nn.Module):
    """A strided convolution (kernel k, padding k // 2) and LayerNorm: (B, C, H, W) -> tokens (B, N, D)."""

    def __init__(self, cin: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))
