"""Adapters shared by the feature methods: FitNet's regressor (FitNet, AB's connectors) and the spatial
matching of two maps (VID, FT, FSP, NST).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_regressor(s_shape: torch.Size, t_shape: torch.Size, relu: bool = True) -> nn.Module:
    """FitNet's regressor from a student map (C_s, H_s, W_s) to a teacher map (C_t, H_t, W_t).

    The rule of RepDistiller/mdistiller's ``ConvReg``, chosen by the spatial sizes:
    H_s = 2 H_t: 3x3 conv, stride 2, padding 1; 2 H_s = H_t: 4x4 transposed conv, stride 2, padding 1;
    H_s >= H_t: a conv with kernel (1 + H_s - H_t, 1 + W_s - W_t) (1x1 for equal sizes). Then BatchNorm(C_t)
    and, by default, ReLU (the hint is a post-ReLU map). For non-spatial features (B, ..., D) a linear map.
    """
    if len(s_shape) != len(t_shape):
        raise ValueError(f"student feature {tuple(s_shape)} and teacher feature {tuple(t_shape)} differ in rank")
    if len(s_shape) != 4:
        return nn.Linear(s_shape[-1], t_shape[-1])
    _, cs, hs, ws = s_shape
    _, ct, ht, wt = t_shape
    if hs == 2 * ht:
        conv: nn.Module = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
    elif 2 * hs == ht:
        conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
    elif hs >= ht:
        conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
    else:
        raise ValueError(f"no FitNet regressor maps spatial size {hs}x{ws} to {ht}x{wt}")
    layers = [conv, nn.BatchNorm2d(ct)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def match_spatial(a: torch.Tensor, b: torch.Tensor, pool: str = "avg") -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-pool whichever of two (B, C, H, W) maps is spatially larger to the other's size (RepDistiller and
    mdistiller pool with averages; torchdistill's FSP with maxima). Maps of equal size are returned untouched."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    fn = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
    if tuple(a.shape[-2:]) != size:
        a = fn(a, size)
    if tuple(b.shape[-2:]) != size:
        b = fn(b, size)
    return a, b
