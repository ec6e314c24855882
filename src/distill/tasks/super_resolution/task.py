"""Super-resolution: low-resolution images in, high-resolution images out; L1 loss, Y-channel PSNR and SSIM.

The metrics follow the SR benchmarks' convention (BasicSR ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel``): the output is clamped to [0, 1] and rounded to 8 bits, both images go to the luma channel of
ITU-R BT.601 (Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1]), ``border`` pixels are cropped from
each side, PSNR = 10 log10(255^2 / MSE) and SSIM (Wang et al. 2004) uses an 11 x 11 Gaussian window with sigma 1.5,
K1 = 0.01, K2 = 0.03 over the valid region. Both are means over images. ``tests/test_super_resolution.py`` checks
them against scikit-image's ``peak_signal_noise_ratio`` and ``structural_similarity``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import Batch
from distill.data.augment import AugmentParamsSource, RandomFlipRot, batch_augment_params
from distill.tasks.super_resolution.data import SRPairs, StreamedSRPairs, cut_patches


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16, 235] (8-bit scale)."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) + 16.0


def _prepare(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    sr = (sr.detach().float().clamp(0, 1) * 255.0).round() / 255.0
    hr = hr.detach().float()
    ys, yh = rgb_to_y(sr).double(), rgb_to_y(hr).double()
    if border:
        ys, yh = ys[..., border:-border, border:-border], yh[..., border:-border, border:-border]
    return ys, yh


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Per-image Y-channel PSNR in dB (B,), images in [0, 1] (``sr`` is clamped and rounded to 8 bits)."""
    ys, yh = _prepare(sr, hr, border)
    mse = (ys - yh).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Per-image Y-channel SSIM (B,) over the valid region of an 11 x 11 Gaussian window (sigma 1.5); an image
    smaller than 11 pixels (after the border) gets the largest odd window that fits."""
    ys, yh = _prepare(sr, hr, border)
    size = min(11, ys.shape[-2], ys.shape[-1])
    win = _gaussian_window(size - (size % 2 == 0)).to(ys.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(ys, win), F.conv2d(yh, win)
    sxx = F.conv2d(ys * ys, win) - mu_x**2
    syy = F.conv2d(yh * yh, win) - mu_y**2
    sxy = F.conv2d(ys * yh, win) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim.flatten(1).mean(1)


class SRMetrics:
    """Running means over images: ``psnr`` (Y channel, dB), ``ssim`` (Y channel) and the RGB ``l1`` loss."""

    def __init__(self, border: int):
        self.border = border
        self.psnr_sum = self.ssim_sum = self.l1_sum = 0.0
        self.n = 0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        hr = batch.labels
        assert hr is not None
        self.psnr_sum += float(psnr_y(outputs, hr, self.border).sum())
        self.ssim_sum += float(ssim_y(outputs, hr, self.border).sum())
        self.l1_sum += float((outputs.float() - hr.float()).abs().flatten(1).mean(1).sum())
        self.n += int(hr.shape[0])

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        psnr = self.psnr_sum / n
        return {"psnr": psnr if math.isfinite(psnr) else 100.0, "ssim": self.ssim_sum / n, "loss": self.l1_sum / n}


class SuperResolution:
    """Upscale the ``lr`` images of an :class:`SRPairs` by ``scale``: the model maps (B, 3, h, w) in [0, 1] to
    (B, 3, s h, s w) in [0, 1]; ``batch.labels`` are the high-resolution images in [0, 1].

    ``augment`` (``data.augment``): training pairs get a random flip / 90-degree rotation
    (:class:`~distill.data.augment.RandomFlipRot`), the same parameters for the input and the target. As in
    image classification the parameters are replayed when ``batch.meta["augment"]`` holds them (a teacher cache's
    build), else taken from ``augment_source`` (a cache of augmented views: the view each example shows this epoch,
    in ``meta["view"]``), else drawn from the trainer's generator. Without ``augment`` a teacher cache stores one
    output per image."""

    primary_metric = "psnr"
    higher_is_better = True

    def __init__(self, scale: int, border: int | None = None, augment: RandomFlipRot | None = None,
                 augment_source: AugmentParamsSource | None = None):
        self.scale = int(scale)
        self.border = self.scale if border is None else int(border)
        self.augment = augment
        self.augment_source = augment_source

    def describe(self) -> dict[str, str]:
        out = {"task": type(self).__name__, "scale": str(self.scale), "inputs": "uint8 / 255"}
        if self.augment is not None:  # only when on: caches built before the option keep their fingerprint
            out["augment"] = repr(self.augment)
        return out

    def num_examples(self, data: SRPairs | StreamedSRPairs) -> int:
        return len(data)

    def draw_positions(self, data: SRPairs | StreamedSRPairs, indices: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor | None:
        """Before a training batch is fetched (by the trainer, from a generator of the seed, epoch and step): the
        HR corners of a streamed set's random patches (:meth:`StreamedSRPairs.draw_positions`), so that the
        worker that decodes the images cuts the patches and only they cross to the training process; None for
        sets that cut no random patches."""
        if isinstance(data, StreamedSRPairs):
            return data.draw_positions(indices, generator)
        return None

    def fetch(self, data: SRPairs | StreamedSRPairs, indices: torch.Tensor,
              positions: torch.Tensor | None = None) -> Batch:
        if isinstance(data, StreamedSRPairs):  # data.streaming: decoded now (in a loader worker, if any)
            return data.fetch(indices, positions)
        if positions is not None:
            raise ValueError("positions are drawn for streamed patches only")
        return Batch(inputs=data.lr[indices], labels=data.hr[indices], indices=indices, meta={})

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        """Pixels to [0, 1]. A streamed training batch arrives cut (the trainer drew its corners with
        :meth:`draw_positions` and the fetch cut them); a streamed batch of whole images fetched without corners
        (``meta["uncut"]``) first gets its random patches here, the corners drawn from ``generator`` and kept in
        ``meta["corners"]``; outside training (no generator) the patches are centred. Then, in
        training with ``augment``, the pairs are flipped / rotated (parameters in ``meta["augment"]``)."""
        meta = dict(batch.meta)
        if "uncut" in meta:
            lr, hr, corners = cut_patches(batch, self.scale, generator if train else None)
            del meta["uncut"], meta["patch"]
            meta["corners"] = corners
            batch = Batch(inputs=lr, labels=hr, indices=batch.indices, meta=meta)
        x, y = batch.inputs, batch.labels
        if train and self.augment is not None:
            params = batch_augment_params(self.augment, self.augment_source, meta, batch.indices, x.shape[0],
                                          generator, x.device)
            x = self.augment.apply(x, params)
            y = self.augment.apply(y, params) if y is not None else None
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if y is not None and y.dtype == torch.uint8:
            y = y.float() / 255.0
        return Batch(inputs=x, labels=y, indices=batch.indices, meta=meta)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs)

    def new_metrics(self) -> SRMetrics:
        return SRMetrics(self.border)
