"""Loading and masking for ``task: masked_image_pretraining``: the images are read as in
``task: image_classification``; :func:`random_masking` draws the mask that teacher and student share."""

from __future__ import annotations

from typing import Any

import torch

from distill.tasks.image.data import load_image_data


def load_masked_image_data(cfg: Any) -> tuple[Any, Any, Any]:
    """(train, eval, val) images, as :func:`distill.tasks.image.data.load_image_data` reads them."""
    return load_image_data(cfg)


def num_visible(num_patches: int, ratio: float) -> int:
    """floor(L (1 - ratio)): the patches an encoder sees (MAE's ``len_keep``); at least one."""
    return max(1, int(num_patches * (1 - ratio)))


def masking_from_noise(noise: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking from uniform ``noise`` (B, L): the patches with the smallest noise are kept.

    Returns ``ids_keep`` (B, L_vis), ``ids_restore`` (B, L: the inverse permutation of the argsort) and ``mask``
    (B, L; 1 = masked, 0 = visible, in the original patch order)."""
    b, n = noise.shape
    keep = num_visible(n, ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(b, n, device=noise.device)
    mask[:, :keep] = 0
    return ids_keep, ids_restore, torch.gather(mask, 1, ids_restore)


def random_masking(batch_size: int, num_patches: int, ratio: float, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`masking_from_noise` with noise drawn from ``generator``."""
    noise = torch.rand(batch_size, num_patches, generator=generator).to(device)
    return masking_from_noise(noise, ratio)


def indexed_masking(indices: torch.Tensor, num_patches: int, ratio: float, seed: int,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks that depend only on ``seed`` and each image's index (evaluation: the same masks in every run)."""
    noise = torch.stack([torch.rand(num_patches, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
                         for i in indices.tolist()])
    return masking_from_noise(noise.to(device), ratio)
