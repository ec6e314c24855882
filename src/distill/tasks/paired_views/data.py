"""Loading and the view transform of ``task: paired_views``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from distill.tasks.image.data import load_image_data


def load_paired_view_data(cfg: Any) -> tuple[Any, Any, Any]:
    """(train, eval, val) images, read as :func:`distill.tasks.image.data.load_image_data` reads them."""
    return load_image_data(cfg)


def ego_view(images: torch.Tensor, crop: int = 20, flip: bool = True, rotation: float = 15.0,
             gamma: float = 0.7) -> torch.Tensor:
    """The deterministic "ego" view (float in [0, 1], (B, C, H, W)) of uint8 or [0, 1] float images: centre crop
    ``crop`` -> resize to H x W (bilinear) -> horizontal flip -> rotation by ``rotation`` degrees -> x ** gamma."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    _, _, h, w = x.shape
    if crop > min(h, w):
        raise ValueError(f"ego.crop {crop} is larger than the image ({h} x {w})")
    top, left = (h - crop) // 2, (w - crop) // 2
    x = F.interpolate(x[:, :, top:top + crop, left:left + crop], size=(h, w), mode="bilinear", align_corners=False)
    if flip:
        x = x.flip(-1)
    if rotation:
        a = math.radians(rotation)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.clamp(0.0, 1.0).pow(gamma)
