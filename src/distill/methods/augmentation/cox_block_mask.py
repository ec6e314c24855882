"""Cox-process block masking (ORTrack's occlusion simulation), as a batch augmentation.

Paper: Wu et al., "Learning Occlusion-Robust Vision Transformers for Real-Time UAV Tracking" (ORTrack), CVPR 2025,
arXiv:2504.09228; code github.com/wuyou3474/ORTrack (masking read from the fork zyzyzkzk090909-pixel/vittracking,
``lib/models/ortrack/ortrack.py``, first commit, probably identical to the official code: unverified). Re-implemented
from ../shared/methods/dense.md row 1.

For an H x W image, block b, a grid of h = H/b by w = W/b cells and mask ratio r:
(1) base intensity p(u) on the cells: an isotropic Gaussian centred on the image, standard deviation ``sigma``
    pixels, evaluated per pixel and averaged over each cell **(R: the code resizes the pixel map; the resize mode is
    our choice)**, normalised so that sum_u p(u) = 1;
(2) per image, Lambda_i ~ Poisson(floor(h w r)) and lambda_i(u) = Lambda_i p(u) (a Cox, doubly stochastic, process);
(3) thinning: N ~ Poisson(h w max_u lambda_i) cells drawn uniformly, each kept with probability
    lambda_i(u) / max lambda_i (E[kept] = Lambda_i);
(4) m = 0 on kept cells, 1 elsewhere (a cell drawn twice counts once, so the masked fraction is below r), nearest
    up-sampled to pixels and multiplied into the *normalised* image: masked pixels take the dataset mean.
The code's x/y swap in the thinning look-up is not reproduced (harmless for an isotropic Gaussian).

As a method (``cox_block_mask``), ``transform_batch`` replaces each training image by its masked view with
probability ``prob``; teacher and student both see the result. ORR (``orr_invariance``) uses :func:`cox_masks`
itself for its masked branch.
"""

from __future__ import annotations

import math

import torch

from distill.core.batch import Batch
from distill.core.method import IMAGE_TASKS, Method, register_method
from distill.core.outputs import StepInputs

ORTRACK = {"paper": "Learning Occlusion-Robust Vision Transformers for Real-Time UAV Tracking", "year": 2025,
           "arxiv": "2504.09228", "venue": "CVPR", "repo": "https://github.com/wuyou3474/ORTrack"}


def base_intensity(height: int, width: int, block: int, sigma: float) -> torch.Tensor:
    """p(u) on the (H/b, W/b) grid: a pixel-level Gaussian centred on the image, averaged per cell, sum 1."""
    ys = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    xs = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))
    cells = g.reshape(height // block, block, width // block, block).mean(dim=(1, 3))
    return (cells / cells.sum()).float()


def cox_masks(batch: int, height: int, width: int, block: int = 4, ratio: float = 0.3, sigma: float | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (B, 1, H, W) in {0, 1}, accepted points per image (B,), duplicates included)."""
    if height % block or width % block:
        raise ValueError(f"the image ({height} x {width}) is not a whole number of {block}-pixel blocks")
    sigma = height / 2 if sigma is None else sigma
    h, w = height // block, width // block
    p = base_intensity(height, width, block, sigma).flatten()  # (h w,)
    n_cells = h * w
    lam = torch.poisson(torch.full((batch,), float(math.floor(n_cells * ratio))), generator=generator)  # Lambda_i
    grid = torch.ones(batch, n_cells)
    accepted = torch.zeros(batch)
    pmax = float(p.max())
    for i in range(batch):
        if lam[i] == 0:
            continue
        n = int(torch.poisson(torch.tensor([n_cells * float(lam[i]) * pmax]), generator=generator))
        if n == 0:
            continue
        cells = torch.randint(0, n_cells, (n,), generator=generator)
        keep = torch.rand(n, generator=generator) < p[cells] / pmax  # lambda(u) / max lambda = p(u) / max p
        kept = cells[keep]
        accepted[i] = float(kept.numel())
        grid[i, kept] = 0.0
    masks = grid.reshape(batch, 1, h, w).repeat_interleave(block, 2).repeat_interleave(block, 3)
    return masks, accepted


def uniform_block_masks(batch: int, height: int, width: int, block: int = 4, ratio: float = 0.3,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The off-by-default ablation: floor(h w r) cells drawn uniformly without replacement per image."""
    h, w = height // block, width // block
    k = int(math.floor(h * w * ratio))
    order = torch.argsort(torch.rand(batch, h * w, generator=generator), dim=1)
    grid = torch.ones(batch, h * w)
    grid.scatter_(1, order[:, :k], 0.0)
    return grid.reshape(batch, 1, h, w).repeat_interleave(block, 2).repeat_interleave(block, 3)


def masked_view(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The normalised images with masked pixels set to the dataset mean (0 after normalisation)."""
    return images * masks.to(images.device, images.dtype)


@register_method("cox_block_mask", family="augmentation", **ORTRACK)
class CoxBlockMask(Method):
    """Replace training images by Cox-process block-masked views (probability ``prob``); no loss term."""

    tasks = IMAGE_TASKS
    needs_teacher = False

    def __init__(self, ratio: float = 0.3, block: int = 4, sigma: float | None = None, prob: float = 1.0,
                 sampler: str = "cox"):
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {ratio}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if sampler not in ("cox", "uniform"):
            raise ValueError(f"sampler must be 'cox' or 'uniform', got {sampler!r}")
        self.ratio, self.block, self.sigma, self.prob, self.sampler = ratio, block, sigma, prob, sampler

    def masks(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, hgt, wid = images.shape
        if self.sampler == "uniform":
            return uniform_block_masks(b, hgt, wid, self.block, self.ratio, generator)
        return cox_masks(b, hgt, wid, self.block, self.ratio, self.sigma, generator)[0]

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        masks = self.masks(batch.inputs, generator)
        use = (torch.rand(masks.shape[0], generator=generator) < self.prob).float().view(-1, 1, 1, 1)
        masks = use * masks + (1 - use)
        return Batch(inputs=masked_view(batch.inputs, masks), labels=batch.labels, indices=batch.indices,
                     meta={**batch.meta, "cox_mask": masks})

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {}
