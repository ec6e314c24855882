"""Batch augmentation in plain torch, with its randomness made explicit.

Each random transform separates *drawing* its parameters (:meth:`RandomCropFlip.sample`, from a
``torch.Generator`` the caller owns) from *applying* them (:meth:`RandomCropFlip.apply`, a pure function of the
images and the parameters). A training run that records its generator seeds, or the parameters themselves, can
therefore be replayed exactly, and a teacher and a student can be shown the very same augmented views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

__all__ = [
    "AugmentParamsSource",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalize",
    "RandomCropFlip",
    "RandomFlipRot",
    "batch_augment_params",
]

#: Per-channel mean and standard deviation of the CIFAR-10 training images (RGB, pixel values in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: The ImageNet statistics most pretrained models expect (RGB, pixel values in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class AugmentParamsSource(Protocol):
    """Supplies the augmentation parameters of training examples instead of fresh random draws (a replay).

    ``augment_params(indices, epoch)`` returns the parameters for the examples (as from
    :meth:`RandomCropFlip.sample`) and an int64 (N,) tensor naming the stored view each one is.
    """

    def augment_params(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def batch_augment_params(augment: RandomCropFlip | RandomFlipRot, source: AugmentParamsSource | None,
                         meta: dict, indices: torch.Tensor | None, count: int,
                         generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The augmentation parameters of a training batch, in this order: those already in ``meta["augment"]`` (a
    replayed batch), those of ``source`` for the batch's ``indices`` at ``meta["epoch"]`` (the stored views of a
    teacher cache; their ids go to ``meta["view"]``), or fresh draws from ``generator``. ``meta`` is updated in
    place: ``meta["augment"]`` holds the parameters on ``device``."""
    params = meta.get("augment")
    if params is None and source is not None:
        if "epoch" not in meta or indices is None:
            raise ValueError("replayed augmentation needs the batch's indices and meta['epoch']")
        params, views = source.augment_params(indices, int(meta["epoch"]))
        meta["view"] = views.to(device)
    elif params is None:
        if generator is None:
            raise ValueError("training batches need a generator for their augmentation")
        params = augment.sample(count, generator)
    meta["augment"] = params = params.to(device)
    return params


class RandomCropFlip:
    """Random crop of a zero-padded image plus random horizontal flip, for a whole batch at once.

    With the default ``size=None`` this is the classic CIFAR augmentation: pad every side by ``padding`` zeros,
    crop back to H x W at a random offset, flip left-right with probability 1/2 (crop first, then flip).

    Args:
        padding: zeros added on every side; offsets are drawn in ``[0, 2 * padding]``.
        flip: whether to draw random horizontal flips (when False the flip parameter is always 0).
        size: output size ``h`` or ``(h, w)``; default the input size. The h x w window is centred on the image
            and shifted by ``(dy - padding, dx - padding)``, with zeros wherever it leaves the image (so e.g.
            ``size=32, padding=2`` takes random 32 x 32 crops of 36 x 36 images).

    Parameters are an int64 tensor of shape (N, 3): (dy, dx, flip).
    """

    def __init__(self, padding: int = 4, flip: bool = True, size: int | Sequence[int] | None = None) -> None:
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = padding
        self.flip = bool(flip)
        if size is None:
            self.size: tuple[int, int] | None = None
        else:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in hw):
                raise ValueError(f"size must be a positive int or a pair of them, got {size!r}")
            self.size = (int(hw[0]), int(hw[1]))

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip}, size={self.size})"

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw parameters for ``n`` images: int64 (n, 3) of (dy, dx, flip), on the generator's device.

        Always consumes the same amount of randomness for a given ``n`` (flips are drawn even when ``flip`` is
        False, then zeroed), so toggling ``flip`` does not change the crops drawn.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        device = generator.device
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator, device=device)
        flips = torch.randint(0, 2, (n, 1), generator=generator, device=device)
        if not self.flip:
            flips.zero_()
        return torch.cat([offsets, flips], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Crop and flip ``images`` (N, C, H, W; any dtype, any device) with ``params`` from :meth:`sample`.

        Returns a new tensor of shape (N, C, h, w) (h x w = H x W unless ``size`` was given) and the input dtype.
        Vectorised: one gather for the whole batch, no Python loop over samples.
        """
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        n, c, height, width = images.shape
        if params.shape != (n, 3):
            raise ValueError(f"params must have shape ({n}, 3) for {n} images, got {tuple(params.shape)}")
        if params.dtype.is_floating_point or params.dtype == torch.bool:
            raise TypeError(f"params must be an integer tensor, got {params.dtype}")
        p = self.padding
        if n and params.device.type == "cpu":  # (checking parameters on an accelerator would cost a sync)
            if int(params[:, :2].min()) < 0 or int(params[:, :2].max()) > 2 * p:
                raise ValueError(f"crop offsets must lie in [0, {2 * p}] for padding={p}")
            if int(params[:, 2].min()) < 0 or int(params[:, 2].max()) > 1:
                raise ValueError("flip parameters must be 0 or 1")
        params = params.to(device=images.device, dtype=torch.int64)
        dy, dx, fl = params[:, 0], params[:, 1], params[:, 2]
        h, w = self.size if self.size is not None else (height, width)
        dev = images.device
        # source row/column in the unpadded image for every output row/column
        rows = dy[:, None] + ((height - h) // 2 - p) + torch.arange(h, device=dev)  # (N, h)
        out_cols = torch.arange(w, device=dev)
        out_cols = torch.where(fl[:, None].bool(), (w - 1) - out_cols, out_cols)  # (N, w): flip after cropping
        cols = dx[:, None] + ((width - w) // 2 - p) + out_cols  # (N, w)
        valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        flat = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]  # (N, h, w)
        index = flat.reshape(n, 1, h * w).expand(n, c, h * w)
        out = images.reshape(n, c, height * width).gather(2, index).reshape(n, c, h, w)
        return out.masked_fill_(~valid[:, None], 0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``apply(images, sample(len(images), generator))``."""
        params = self.sample(images.shape[0], generator)
        return self.apply(images, params)


class RandomFlipRot:
    """The geometric augmentation of super-resolution training (EDSR, BasicSR's ``augment``, SPAN): a random
    horizontal flip, vertical flip and 90-degree rotation of each image, one of the 8 orientations of the square
    (the dihedral group D4) drawn uniformly. Applying the same parameters to a low-resolution patch and to its
    high-resolution partner keeps the pair aligned: pixel (i, j) of the one and the ``scale`` x ``scale`` block
    (s i, s j) of the other move together.

    Parameters are an int64 tensor of shape (N, 3): (hflip, vflip, transpose), each 0 or 1. Applied in that order:
    reverse the columns, reverse the rows, then swap rows and columns (BasicSR's ``rot90`` flag is that transpose;
    after a flip it is a rotation by 90 degrees). ``rotate=False`` draws flips only (the transpose column is always
    0): a non-square image cannot be transposed into a batch of its own shape.
    """

    def __init__(self, rotate: bool = True) -> None:
        self.rotate = bool(rotate)

    def __repr__(self) -> str:
        return f"RandomFlipRot(rotate={self.rotate})"

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Parameters for ``n`` images: int64 (n, 3) of independent fair coins, on the generator's device. The same
        randomness is consumed whether or not ``rotate`` is set (the transpose column is drawn, then zeroed)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        params = torch.randint(0, 2, (n, 3), generator=generator, device=generator.device)
        if not self.rotate:
            params[:, 2] = 0
        return params

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Flip and transpose ``images`` (N, C, H, W; any dtype, any device) with ``params`` from :meth:`sample`.
        With ``rotate`` the images must be square (H = W)."""
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        n = images.shape[0]
        if params.shape != (n, 3):
            raise ValueError(f"params must have shape ({n}, 3) for {n} images, got {tuple(params.shape)}")
        if params.dtype.is_floating_point or params.dtype == torch.bool:
            raise TypeError(f"params must be an integer tensor, got {params.dtype}")
        if n and params.device.type == "cpu" and (int(params.min()) < 0 or int(params.max()) > 1):
            raise ValueError("flip and transpose parameters must be 0 or 1")
        flags = params.to(device=images.device).bool().view(n, 3, 1, 1, 1)
        out = torch.where(flags[:, 0], images.flip(-1), images)
        out = torch.where(flags[:, 1], out.flip(-2), out)
        if images.shape[-1] != images.shape[-2]:
            if self.rotate:
                raise ValueError(f"90-degree rotations need square images, got {images.shape[-2]} x "
                                 f"{images.shape[-1]} (use RandomFlipRot(rotate=False): flips only)")
            return out
        return torch.where(flags[:, 2], out.transpose(-1, -2), out)


class Normalize:
    """Per-channel normalisation to float32: ``(x / 255 - mean) / std`` for uint8, ``(x - mean) / std`` otherwise.

    Works on (N, C, H, W) or (C, H, W) tensors on any device (the statistics follow the input's device).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std must have the same, non-zero length; got {mean} and {std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {std}")
        self._stats: dict[tuple[torch.device, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"

    def _get(self, device: torch.device, from_uint8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, from_uint8)
        if key not in self._stats:
            scale = 255.0 if from_uint8 else 1.0
            shape = (len(self.mean), 1, 1)
            mean = torch.tensor([m * scale for m in self.mean], dtype=torch.float32, device=device).reshape(shape)
            std = torch.tensor([s * scale for s in self.std], dtype=torch.float32, device=device).reshape(shape)
            self._stats[key] = (mean, std)
        return self._stats[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim not in (3, 4):
            raise ValueError(f"images must have shape (N, C, H, W) or (C, H, W), got {tuple(images.shape)}")
        channels = images.shape[-3]
        if channels != len(self.mean):
            raise ValueError(f"images have {channels} channels but mean/std have {len(self.mean)}")
        from_uint8 = images.dtype == torch.uint8
        if not from_uint8 and not images.dtype.is_floating_point:
            raise TypeError(f"images must be uint8 (0-255) or floating point, got {images.dtype}")
        mean, std = self._get(images.device, from_uint8)
        return (images.to(torch.float32) - mean) / std
