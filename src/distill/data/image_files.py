"""Folders of image files read one file at a time (``data.streaming`` of the dense families): the file list,
each image's size read from its header, decoding on demand and aligned random patches.

A streamed set keeps paths and sizes only; the pixels of an example are decoded when its batch is fetched (in a
DataLoader worker with ``train.num_workers``), always through :func:`distill.data.images.upright`, so EXIF-rotated
photos come out as they are displayed. Random patch positions are never drawn in the worker: the trainer asks the
task for them before the fetch (``draw_positions``, from a generator of the seed, the epoch and the step) and the
worker cuts them, so a resumed run and a run with any number of workers cut the same patches, and only patches
leave the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distill.config import ConfigError
from distill.data.image_tables import DataReadError
from distill.data.images import _EXIF_ORIENTATION, IMAGE_EXTENSIONS, to_rgb, upright

__all__ = ["RESIZE_MODES", "DataReadError", "cut", "draw_corners", "header_size", "image_files", "pad_stack",
           "read_rgb", "resized_size", "several_sizes", "tiles_of"]

IMAGE_SUFFIXES = IMAGE_EXTENSIONS  # one list for every family's image files


def image_files(folder: Path) -> list[Path]:
    """The images of ``folder`` by name (hidden files such as macOS ``._x.png`` skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def header_size(path: Path, key: str) -> tuple[int, int]:
    """(H, W) of the image at ``path`` as it is displayed, read from its header (an EXIF orientation of 5-8
    swaps the sides); a PNG whose EXIF block sits after its pixels is taken as stored (the decoded size is
    checked against this one when the image is read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = 1
            if im.format != "PNG" or "exif" in im.info:  # a PNG's getexif() would decode the whole image
                try:
                    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                except Exception:  # an unreadable EXIF block: read as stored, as upright() does
                    orientation = 1
    except OSError as e:
        raise ConfigError(f"{key}: {path.name}: {e}") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


#: how ``data.image_size`` fits a photo to ``size`` (semantic segmentation's ``data.resize``)
RESIZE_MODES = ("stretch", "shorter_side", "longer_side_pad")


def resized_size(h: int, w: int, size: int, mode: str) -> tuple[int, int]:
    """(H, W) of an ``h`` x ``w`` image resized to ``size`` by ``mode``: ``stretch`` gives ``size`` x ``size``
    (the aspect ratio lost); ``shorter_side`` scales both sides by ``size`` / min(h, w) (the shorter side becomes
    ``size``, the longer one is rounded half up, as mmcv's ``rescale_size`` does); ``longer_side_pad`` scales by
    ``size`` / max(h, w) (the longer side becomes ``size``; the image is then padded to ``size`` x ``size``, and
    this is the size of the image inside the padding)."""
    if mode == "stretch":
        return size, size
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r} (one of {', '.join(RESIZE_MODES)})")
    side = min(h, w) if mode == "shorter_side" else max(h, w)
    if side == h:
        return size, max(1, int(w * size / h + 0.5))
    return max(1, int(h * size / w + 0.5)), size


def read_rgb(path: Path, key: str) -> np.ndarray:
    """H x W x 3 uint8 of the image at ``path``, upright (gray and RGBA become RGB); a file that cannot be read
    raises :class:`~distill.data.image_tables.DataReadError` naming ``key`` and the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(to_rgb(upright(im)), dtype=np.uint8)
    except OSError as e:
        raise DataReadError(f"{key}: {path.name}: {e}") from None


def pad_stack(arrays: Sequence[torch.Tensor], fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors (..., H_i, W_i) stacked into one (N, ..., max H, max W), padded with ``fill`` at the bottom and
    right, and their sizes (N, 2) int64."""
    sizes = torch.tensor([tuple(a.shape[-2:]) for a in arrays], dtype=torch.int64).reshape(-1, 2)
    if len({tuple(s) for s in sizes.tolist()}) <= 1:
        return torch.stack(list(arrays)), sizes
    h, w = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    out = arrays[0].new_full((len(arrays), *arrays[0].shape[:-2], h, w), fill)
    for i, a in enumerate(arrays):
        out[i, ..., : a.shape[-2], : a.shape[-1]] = a
    return out, sizes


def draw_corners(sizes: torch.Tensor, patch: int, generator: torch.Generator | None, step: int = 1) -> torch.Tensor:
    """(N, 2) top-left corners (y, x) of ``patch``-pixel squares inside images of ``sizes`` (N, 2), on a grid
    of ``step`` pixels (the scale, so a high-resolution patch has an exact low-resolution partner): uniform over
    the positions, drawn from ``generator`` (None: centred, for a deterministic view)."""
    room = (sizes.cpu() - patch) // step  # the number of grid positions - 1 along each side
    if bool((room < 0).any()):
        i = int((room < 0).any(1).nonzero()[0])
        raise ValueError(f"image {i} of the batch ({int(sizes[i, 0])} x {int(sizes[i, 1])}) is smaller than a "
                         f"{patch}-pixel patch")
    if generator is None:
        return (room // 2) * step
    u = torch.rand(room.shape, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    return torch.minimum((u * (room + 1).double()).floor().long(), room) * step


def cut(images: torch.Tensor, corners: torch.Tensor, patch: int) -> torch.Tensor:
    """``patch`` x ``patch`` squares of ``images`` (N, ..., H, W) at ``corners`` (N, 2)."""
    return torch.stack([images[i, ..., y:y + patch, x:x + patch]
                        for i, (y, x) in enumerate(corners.tolist())])


def tiles_of(sizes: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int, int]]:
    """(image, y, x) of the non-overlapping ``size`` x ``size`` tiles of each image, image by image and row by row
    (the remainder dropped), the order of :func:`distill.tasks.super_resolution.data._tiles`."""
    return [(i, ty * size, tx * size) for i, (h, w) in enumerate(sizes)
            for ty in range(h // size) for tx in range(w // size)]


def several_sizes(names: Sequence[str], sizes: Sequence[tuple[int, int]]) -> str | None:
    """``"a.png: 10 x 12, b.png: 8 x 8"`` (up to three) when the images have more than one size, else None."""
    first: dict[tuple[int, int], str] = {}
    for n, s in zip(names, sizes, strict=True):
        first.setdefault(tuple(s), n)  # type: ignore[arg-type]
    if len(first) <= 1:
        return None
    return ", ".join(f"{n}: {h} x {w}" for (h, w), n in list(first.items())[:3])
