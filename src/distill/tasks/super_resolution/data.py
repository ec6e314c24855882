"""Loading super-resolution pairs: high-resolution images (CIFAR-10 and other image sets, image folders, texture
crops) and their antialiased-bicubic low-resolution versions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import ConfigError
from distill.core.batch import Batch
from distill.data.image_files import (
    IMAGE_SUFFIXES,
    DataReadError,
    draw_corners,
    header_size,
    image_files,
    pad_stack,
    read_rgb,
    several_sizes,
    tiles_of,
)
from distill.data.images import to_rgb, upright
from distill.data.textures import load_textures, row_split
from distill.tasks.common import existing_folder, existing_path

__all__ = ["IMAGE_SUFFIXES", "SRPairs", "StreamedSRPairs", "bicubic_down", "load_sr_data", "read_pair_folder"]


@dataclass
class SRPairs:
    """Low-resolution inputs ``lr`` (uint8, N x 3 x h x w) and high-resolution targets ``hr`` (uint8,
    N x 3 x (s h) x (s w))."""

    lr: torch.Tensor
    hr: torch.Tensor
    scale: int
    source: str = ""

    def __post_init__(self) -> None:
        for name, t in (("lr", self.lr), ("hr", self.hr)):
            if t.dtype != torch.uint8 or t.dim() != 4:
                raise ValueError(f"{name} must be uint8 N x C x H x W, got {t.dtype} {tuple(t.shape)}")
        if self.lr.shape[:2] != self.hr.shape[:2] or \
                tuple(self.hr.shape[2:]) != (self.lr.shape[2] * self.scale, self.lr.shape[3] * self.scale):
            raise ValueError(f"hr {tuple(self.hr.shape)} is not lr {tuple(self.lr.shape)} times {self.scale}")

    def __len__(self) -> int:
        return int(self.hr.shape[0])


def bicubic_down(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downsampling by ``scale`` of uint8 images (N, C, H, W), rounded back to uint8 (the
    Matlab ``imresize`` convention that SR benchmarks use, as torch implements it). H and W must divide by
    ``scale``."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image size {h} x {w} does not divide by the scale {scale}")
    out = []
    for chunk in hr.split(512):
        x = F.interpolate(chunk.float() / 255.0, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                          align_corners=False)
        out.append((x.clamp(0, 1) * 255.0).round().to(torch.uint8))
    return torch.cat(out)


def make_pairs(hr: torch.Tensor, scale: int, source: str) -> SRPairs:
    h, w = hr.shape[-2:]
    hr = hr[..., : h - h % scale, : w - w % scale].contiguous()  # crop to a multiple of the scale
    return SRPairs(bicubic_down(hr, scale), hr, scale, source)


def texture_crops(n: int, seed: int, split: str, *, textures: tuple[str, ...], hr_size: int, split_row: int,
                  sources: dict[str, np.ndarray] | None = None) -> torch.Tensor:
    """``n`` uint8 crops (n, 3, hr_size, hr_size) of the texture photographs' ``split`` rows, texture drawn
    uniformly per crop."""
    photos = sources if sources is not None else load_textures(textures)
    parts = []
    for name in textures:
        img = photos[name]
        part = row_split(img if img.ndim == 3 else img[..., None].repeat(3, -1), split, split_row)
        if part.shape[0] < hr_size or part.shape[1] < hr_size:
            raise ValueError(f"texture {name!r}: the {split} rows are smaller than one {hr_size}-pixel crop")
        parts.append(np.round(part * 255.0).astype(np.uint8))
    rng = np.random.default_rng(seed)
    out = np.empty((n, hr_size, hr_size, 3), dtype=np.uint8)
    for i in range(n):
        src = parts[int(rng.integers(0, len(parts)))]
        y0 = int(rng.integers(0, src.shape[0] - hr_size + 1))
        x0 = int(rng.integers(0, src.shape[1] - hr_size + 1))
        out[i] = src[y0:y0 + hr_size, x0:x0 + hr_size]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def pair_stems(hr_stems: list[str], lr_stems: list[str], scale: int, key: str) -> list[str]:
    """For each of ``hr_stems``, the stem of its partner in ``lr/`` (``<stem>`` or DIV2K's ``<stem>x<scale>``);
    an image on either side without a partner is refused, naming it."""
    lrs = set(lr_stems)
    partners = [stem if stem in lrs else f"{stem}x{scale}" for stem in hr_stems]
    lone = sorted({s for s, p in zip(hr_stems, partners, strict=True) if p not in lrs} | (lrs - set(partners)))
    if lone:
        raise ConfigError(f"{key}: hr/ and lr/ must hold the same file names (or lr/<stem>x{scale}); "
                          f"unpaired: {lone[:5]}")
    return partners


def _read_folder(folder: Path, key: str) -> list[tuple[str, str, np.ndarray]]:
    """(stem, file name, H x W x 3 uint8) of every image in ``folder`` (hidden files such as macOS ``._x.png``
    skipped; gray and RGBA images become RGB; turned upright by their EXIF orientation)."""
    from PIL import Image

    files = image_files(folder)
    if not files:
        raise ConfigError(f"{key}: {folder} holds no images")
    out = []
    for p in files:
        try:
            with Image.open(p) as im:
                out.append((p.stem, p.name, np.asarray(to_rgb(upright(im)), dtype=np.uint8)))
        except OSError as e:
            raise ConfigError(f"{key}: {p.name}: {e}") from None
    return out


def _tiles(a: np.ndarray, size: int) -> np.ndarray:
    """The non-overlapping ``size`` x ``size`` tiles of an H x W x 3 image, row by row (the remainder dropped)."""
    ny, nx = a.shape[0] // size, a.shape[1] // size
    return a[:ny * size, :nx * size].reshape(ny, size, nx, size, 3).transpose(0, 2, 1, 3, 4).reshape(-1, size, size, 3)


def _stack(images: list[tuple[str, str, np.ndarray]], patch: int | None, folder: Path, key: str) -> np.ndarray:
    """N x H x W x 3: the images themselves (all of one size), or with ``patch`` their tiles."""
    if patch is not None:
        small = [(n, a.shape) for _, n, a in images if min(a.shape[:2]) < patch]
        if small:
            raise ConfigError(f"data.patch_size: {patch} px is larger than {small[0][0]} in {folder} "
                              f"({small[0][1][0]} x {small[0][1][1]})")
        return np.concatenate([_tiles(a, patch) for _, _, a in images])
    sizes: dict[tuple[int, ...], str] = {}
    for _, n, a in images:
        sizes.setdefault(a.shape[:2], n)
    if len(sizes) > 1:
        named = ", ".join(f"{n}: {h} x {w}" for (h, w), n in list(sizes.items())[:3])
        raise ConfigError(f"{key}: the images in {folder} have several sizes ({named}); set data.patch_size to cut "
                          "them into square patches (a batch holds equal-sized images)")
    return np.stack([a for _, _, a in images])


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def read_pair_folder(root: Path, scale: int, key: str, patch_size: int | None = None) -> SRPairs:
    """A folder of high-resolution images, or ``hr/`` and ``lr/`` subfolders: the low-resolution image of
    ``hr/<stem>.*`` is ``lr/<stem>.*`` or ``lr/<stem>x<scale>.*`` (DIV2K's naming), its size the high-resolution
    one divided by ``scale`` (a high-resolution image up to ``scale`` - 1 pixels larger is cropped to fit).
    ``patch_size``: every image (pair) is cut into non-overlapping ``patch_size`` px high-resolution tiles, so
    images of any sizes can be used."""
    if patch_size is not None and patch_size % scale:
        raise ConfigError(f"data.patch_size: {patch_size} does not divide by data.scale {scale}")
    if (root / "hr").is_dir() and (root / "lr").is_dir():
        hrs = _read_folder(root / "hr", key)
        lrs = {stem: (n, a) for stem, n, a in _read_folder(root / "lr", key)}
        partners = pair_stems([stem for stem, _, _ in hrs], list(lrs), scale, key)
        pairs_hr, pairs_lr = [], []
        for (stem, name, hr), lstem in zip(hrs, partners, strict=True):
            lname, lr = lrs[lstem]
            h, w = lr.shape[0] * scale, lr.shape[1] * scale
            if not (h <= hr.shape[0] < h + scale and w <= hr.shape[1] < w + scale):
                raise ConfigError(f"{key}: hr/{name} is {hr.shape[0]} x {hr.shape[1]}, not lr/{lname} "
                                  f"({lr.shape[0]} x {lr.shape[1]}) times {scale} (data.scale)")
            pairs_hr.append((stem, name, np.ascontiguousarray(hr[:h, :w])))
            pairs_lr.append((stem, lname, lr))
        hr_arr = _stack(pairs_hr, patch_size, root / "hr", key)
        lr_arr = _stack(pairs_lr, None if patch_size is None else patch_size // scale, root / "lr", key)
        try:
            return SRPairs(_nchw(lr_arr), _nchw(hr_arr), scale, f"{root} (hr/ + lr/)")
        except ValueError as e:
            raise ConfigError(f"{key}: {e} (data.scale is {scale})") from None
    folder = root / "hr" if (root / "hr").is_dir() else root
    return make_pairs(_nchw(_stack(_read_folder(folder, key), patch_size, folder, key)), scale, str(root))

# -- streamed folders (data.streaming) -----------------------------------------------------------------------------
@dataclass
class StreamedSRPairs:
    """The pairs of a ``source: folders`` set read one file at a time (``data.streaming``): file paths and
    high-resolution sizes only, no pixels.

    ``hr_files[i]`` and its partner ``lr_files[i]`` (None: the low-resolution image is made by bicubic
    downsampling) with ``sizes[i]``, the high-resolution (H, W) cut to the low-resolution size times ``scale``.
    ``mode``: ``whole`` (an example is a whole image), ``patches`` (an example is an image; training cuts a random
    ``patch_size`` patch from it in :meth:`SuperResolution.prepare`), or ``tiles`` (an example is one of the
    non-overlapping ``patch_size`` tiles in ``tiles``: (image, y, x), as the in-memory path cuts them)."""

    hr_files: list[Path]
    lr_files: list[Path] | None
    sizes: list[tuple[int, int]]
    scale: int
    mode: str = "whole"
    patch_size: int | None = None
    tiles: list[tuple[int, int, int]] | None = None
    key: str = "data.train"
    source: str = ""

    def __post_init__(self) -> None:
        self._last: tuple[int, tuple[torch.Tensor, torch.Tensor | None]] | None = None  # the tiles' last image

    def __len__(self) -> int:
        return len(self.tiles) if self.tiles is not None else len(self.hr_files)

    def __getstate__(self) -> dict:  # a worker process starts without the last image
        return {k: v for k, v in self.__dict__.items() if k != "_last"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._last = None

    @property
    def input_shape(self) -> list[int]:
        """(C, h, w) of a low-resolution input."""
        if self.patch_size is not None:
            return [3, self.patch_size // self.scale, self.patch_size // self.scale]
        h, w = self.sizes[0]
        return [3, h // self.scale, w // self.scale]

    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(HR 3 x H x W, its ``lr/`` partner 3 x H/s x W/s or None) of image ``i``, decoded now, upright."""
        h, w = self.sizes[i]
        hr = read_rgb(self.hr_files[i], self.key)
        if hr.shape[0] < h or hr.shape[1] < w:
            raise DataReadError(f"{self.key}: {self.hr_files[i].name} decodes to {hr.shape[0]} x {hr.shape[1]}, "
                                f"not the {h} x {w} its header gave")
        hr_t = torch.from_numpy(np.ascontiguousarray(hr[:h, :w])).permute(2, 0, 1).contiguous()
        if self.lr_files is None:
            return hr_t, None
        lr = read_rgb(self.lr_files[i], self.key)
        if lr.shape[:2] != (h // self.scale, w // self.scale):
            raise DataReadError(f"{self.key}: {self.lr_files[i].name} decodes to {lr.shape[0]} x {lr.shape[1]}, "
                                f"not {h // self.scale} x {w // self.scale}")
        return hr_t, torch.from_numpy(lr).permute(2, 0, 1).contiguous()

    def _image(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._last is None or self._last[0] != i:
            self._last = (i, self.read(i))
        return self._last[1]

    def draw_positions(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """``patches``: the (N, 2) HR corners (y, x) of the random patches of the images at ``indices``, on the
        ``scale`` grid, uniform over the positions, drawn from ``generator`` and the sizes read from the headers
        (the draws :func:`cut_patches` makes for a batch of these images); other modes cut nothing: None."""
        if self.mode != "patches":
            return None
        sizes = torch.tensor([self.sizes[k] for k in indices.tolist()], dtype=torch.int64).reshape(-1, 2)
        return draw_corners(sizes, int(self.patch_size or 0), generator, step=self.scale)

    def fetch(self, indices: torch.Tensor, positions: torch.Tensor | None = None) -> Batch:
        """The examples at ``indices``, decoded now. ``whole`` and ``tiles``: (LR, HR) as :class:`SRPairs` gives
        them; ``patches`` with ``positions`` (the HR corners of :meth:`draw_positions`): the patches cut here (in
        the loader worker: only the patches leave it), LR from the ``lr/`` partner at corner / ``scale`` or the
        HR patch downsampled, the corners in ``meta["corners"]``; ``patches`` without: the whole images,
        zero-padded to the largest, with ``meta["uncut"]`` (their HR sizes) and ``meta["patch"]``, for
        :meth:`SuperResolution.prepare` to cut."""
        idx = indices.tolist()
        s = self.scale
        if self.mode == "patches" and positions is not None:
            return self._fetch_patches(indices, positions)
        if self.mode == "tiles":
            assert self.tiles is not None and self.patch_size is not None
            t, hrs, lrs = self.patch_size, [], []
            for k in idx:
                i, y, x = self.tiles[k]
                hr, lr = self._image(i)
                hrs.append(hr[:, y:y + t, x:x + t])
                lrs.append(lr[:, y // s:(y + t) // s, x // s:(x + t) // s] if lr is not None else None)
            hr_b = torch.stack(hrs) if hrs else torch.zeros((0, 3, t, t), dtype=torch.uint8)
            lr_b = bicubic_down(hr_b, s) if self.lr_files is None else torch.stack(lrs)
            return Batch(inputs=lr_b, labels=hr_b, indices=indices, meta={})
        pairs = [self.read(k) for k in idx]
        if self.mode == "patches":
            hr_b, sizes = pad_stack([hr for hr, _ in pairs])
            lr_b = pad_stack([lr for _, lr in pairs])[0] if self.lr_files is not None else None
            return Batch(inputs=hr_b, labels=lr_b, indices=indices,
                         meta={"uncut": sizes, "patch": int(self.patch_size or 0)})
        sizes = {tuple(hr.shape[-2:]) for hr, _ in pairs}
        if len(sizes) > 1:
            named = several_sizes([self.hr_files[k].name for k in idx], [self.sizes[k] for k in idx])
            raise DataReadError(f"{self.key}: one batch holds images of several sizes ({named}); set "
                                "train.eval_batch_size: 1 or data.patch_size")
        hr_b = torch.stack([hr for hr, _ in pairs])
        lr_b = bicubic_down(hr_b, s) if self.lr_files is None else torch.stack([lr for _, lr in pairs])
        return Batch(inputs=lr_b, labels=hr_b, indices=indices, meta={})

    def _fetch_patches(self, indices: torch.Tensor, corners: torch.Tensor) -> Batch:
        """The ``patch_size`` HR patches at ``corners`` of the images at ``indices`` and their LR partners, each
        image decoded, cut and let go before the next (the batch holds patches only)."""
        p, s = int(self.patch_size or 0), self.scale
        corners = corners.long().cpu().reshape(-1, 2)
        idx = indices.tolist()
        if len(idx) != corners.shape[0]:
            raise ValueError(f"{len(idx)} indices but {corners.shape[0]} positions")
        hrs, lrs = [], []
        for k, (y, x) in zip(idx, corners.tolist(), strict=True):
            h, w = self.sizes[k]
            if y % s or x % s or not (0 <= y <= h - p and 0 <= x <= w - p):
                raise ValueError(f"corner ({y}, {x}) of a {p}-pixel patch is not on the {s}-pixel grid inside "
                                 f"{self.hr_files[k].name} ({h} x {w})")
            hr, lr = self.read(k)
            hrs.append(hr[:, y:y + p, x:x + p].clone())
            lrs.append(lr[:, y // s:(y + p) // s, x // s:(x + p) // s].clone() if lr is not None else None)
        hr_b = torch.stack(hrs) if hrs else torch.zeros((0, 3, p, p), dtype=torch.uint8)
        lr_b = bicubic_down(hr_b, s) if self.lr_files is None else torch.stack(lrs)  # type: ignore[arg-type]
        return Batch(inputs=lr_b, labels=hr_b, indices=indices, meta={"corners": corners})

    def subset(self, keep: torch.Tensor) -> StreamedSRPairs:
        """The examples at ``keep`` (images, or tiles in ``tiles`` mode)."""
        k = keep.tolist()
        note = f" ({len(k)} of {len(self)})"
        if self.tiles is not None:
            return StreamedSRPairs(self.hr_files, self.lr_files, self.sizes, self.scale, self.mode, self.patch_size,
                                   [self.tiles[i] for i in k], self.key, self.source + note)
        return StreamedSRPairs([self.hr_files[i] for i in k],
                               None if self.lr_files is None else [self.lr_files[i] for i in k],
                               [self.sizes[i] for i in k], self.scale, self.mode, self.patch_size, None, self.key,
                               self.source + note)


def cut_patches(batch: Batch, scale: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor]:
    """(LR patches, HR patches, corners) of a ``patches`` batch of :class:`StreamedSRPairs`: an HR patch of
    ``meta["patch"]`` pixels at a corner on the ``scale`` grid drawn from ``generator`` (None: centred), its LR
    partner the ``lr/`` image's patch at the corner / ``scale``, or the HR patch downsampled."""
    from distill.data.image_files import cut

    p = int(batch.meta["patch"])
    corners = draw_corners(batch.meta["uncut"], p, generator, step=scale)
    hr = cut(batch.inputs, corners, p)
    lr = cut(batch.labels, corners // scale, p // scale) if batch.labels is not None else bicubic_down(hr, scale)
    return lr, hr, corners


def stream_pair_folder(root: Path, scale: int, key: str, patch_size: int | None, *, train: bool,
                       single_batch: bool = False) -> StreamedSRPairs:
    """:class:`StreamedSRPairs` of ``root`` (a folder of images, or ``hr/`` + ``lr/``, paired as
    :func:`read_pair_folder` pairs them), reading only the files' headers now. With ``patch_size`` a training set
    cuts a random patch of each image per epoch and an evaluation set scores its tiles; without, the images must
    share one size (``single_batch``: an evaluation set read one image per batch may mix sizes)."""
    paired = (root / "hr").is_dir() and (root / "lr").is_dir()
    folder = root / "hr" if (root / "hr").is_dir() else root
    hr_files = image_files(folder)
    if not hr_files:
        raise ConfigError(f"{key}: {folder} holds no images")
    hr_sizes = [header_size(p, key) for p in hr_files]
    lr_files = None
    if paired:
        lrs = {p.stem: p for p in image_files(root / "lr")}
        lr_files = [lrs[stem] for stem in pair_stems([p.stem for p in hr_files], list(lrs), scale, key)]
        sizes = []
        for hp, lp, (hh, hw) in zip(hr_files, lr_files, hr_sizes, strict=True):
            lh, lw = header_size(lp, key)
            if not (lh * scale <= hh < lh * scale + scale and lw * scale <= hw < lw * scale + scale):
                raise ConfigError(f"{key}: hr/{hp.name} is {hh} x {hw}, not lr/{lp.name} ({lh} x {lw}) times "
                                  f"{scale} (data.scale)")
            sizes.append((lh * scale, lw * scale))
    else:
        sizes = [(h - h % scale, w - w % scale) for h, w in hr_sizes]
    names = [p.name for p in hr_files]
    source = f"{root} ({'hr/ + lr/, ' if paired else ''}streamed)"
    if patch_size is not None:
        small = [(n, hs) for n, hs, s in zip(names, hr_sizes, sizes, strict=True) if min(s) < patch_size]
        if small:
            raise ConfigError(f"data.patch_size: {patch_size} px is larger than {small[0][0]} in {folder} "
                              f"({small[0][1][0]} x {small[0][1][1]})")
        if train:
            return StreamedSRPairs(hr_files, lr_files, sizes, scale, "patches", patch_size, None, key, source)
        return StreamedSRPairs(hr_files, lr_files, sizes, scale, "tiles", patch_size, tiles_of(sizes, patch_size),
                               key, source)
    named = several_sizes(names, hr_sizes if not paired else sizes)
    if named and not single_batch:
        raise ConfigError(f"{key}: the images in {folder} have several sizes ({named}); set data.patch_size to cut "
                          "them into square patches (a batch holds equal-sized images)"
                          + ("" if train else ", or train.eval_batch_size: 1 to score them whole"))
    return StreamedSRPairs(hr_files, lr_files, sizes, scale, "whole", None, None, key, source)


def _subset(hr: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= hr.shape[0]:
        return hr
    order = torch.randperm(hr.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return hr[order.sort().values]


def load_sr_data(cfg: Any) -> tuple[SRPairs | StreamedSRPairs, SRPairs | StreamedSRPairs | None]:
    d = cfg.data
    s = d.scale
    if d.source == "textures":
        t = d.textures
        try:
            photos = load_textures(t.textures)
            kw = dict(textures=tuple(t.textures), hr_size=t.hr_size - t.hr_size % s, split_row=t.split_row,
                      sources=photos)
            train = texture_crops(t.train_size, t.train_seed, "train", **kw)
            evald = texture_crops(t.eval_size, t.eval_seed, "test", **kw)
        except ValueError as e:
            raise ConfigError(f"data.textures: {e}") from None
        return make_pairs(train, s, f"texture crops (train, {t.train_size})"), \
            make_pairs(evald, s, f"texture crops (test, {t.eval_size})")
    if d.train is None:
        raise ConfigError(f"data.train: source {d.source} needs a path")
    if d.source == "folders":
        def folder(value: str, key: str, n: int | None) -> SRPairs | StreamedSRPairs:
            root = existing_folder(value, cfg.base_dir, key)
            if d.streaming:
                one = getattr(getattr(cfg, "train", None), "eval_batch_size", None) == 1
                pairs: SRPairs | StreamedSRPairs = stream_pair_folder(root, s, key, d.patch_size,
                                                                      train=key == "data.train", single_batch=one)
            else:
                pairs = read_pair_folder(root, s, key, d.patch_size)
            if n is None or n >= len(pairs):
                return pairs
            keep = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(d.subset_seed))[:n].sort().values
            if isinstance(pairs, StreamedSRPairs):
                return pairs.subset(keep)
            return SRPairs(pairs.lr[keep], pairs.hr[keep], s, f"{pairs.source} ({n} of {len(pairs)})")

        train = folder(d.train, "data.train", d.train_size)
        evald = folder(d.eval, "data.eval", d.eval_size) if d.eval else None
        return train, evald
    from distill.data.images import load_images

    def read(value: str, split: str | None, key: str, n: int | None) -> SRPairs:
        path = existing_path(value, cfg.base_dir, key)
        try:
            arrays = load_images(path, split, cache_dir=d.cache_dir)
        except (ValueError, TypeError, OSError) as e:
            raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
        return make_pairs(_subset(arrays.images, n, d.subset_seed), s, f"{arrays.source} ({split})")

    train = read(d.train, d.train_split, "data.train", d.train_size)
    evald = read(d.eval, d.eval_split, "data.eval", d.eval_size) if d.eval else None
    return train, evald
