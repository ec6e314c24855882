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
from distill.data.images import upright
from distill.data.textures import load_textures, row_split
from distill.tasks.common import existing_folder, existing_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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


def _read_folder(folder: Path, key: str) -> list[tuple[str, str, np.ndarray]]:
    """(stem, file name, H x W x 3 uint8) of every image in ``folder`` (hidden files such as macOS ``._x.png``
    skipped; gray and RGBA images become RGB; turned upright by their EXIF orientation)."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{key}: {folder} holds no images")
    out = []
    for p in files:
        try:
            with Image.open(p) as im:
                out.append((p.stem, p.name, np.asarray(upright(im).convert("RGB"), dtype=np.uint8)))
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
        pairs_hr, pairs_lr, used = [], [], set()
        for stem, name, hr in hrs:
            lstem = stem if stem in lrs else f"{stem}x{scale}"
            if lstem not in lrs:
                continue
            used.add(lstem)
            lname, lr = lrs[lstem]
            h, w = lr.shape[0] * scale, lr.shape[1] * scale
            if not (h <= hr.shape[0] < h + scale and w <= hr.shape[1] < w + scale):
                raise ConfigError(f"{key}: hr/{name} is {hr.shape[0]} x {hr.shape[1]}, not lr/{lname} "
                                  f"({lr.shape[0]} x {lr.shape[1]}) times {scale} (data.scale)")
            pairs_hr.append((stem, name, np.ascontiguousarray(hr[:h, :w])))
            pairs_lr.append((stem, lname, lr))
        lone = sorted({s for s, _, _ in hrs if s not in {p[0] for p in pairs_hr}} | (set(lrs) - used))
        if lone:
            raise ConfigError(f"{key}: hr/ and lr/ must hold the same file names (or lr/<stem>x{scale}); "
                              f"unpaired: {lone[:5]}")
        hr_arr = _stack(pairs_hr, patch_size, root / "hr", key)
        lr_arr = _stack(pairs_lr, None if patch_size is None else patch_size // scale, root / "lr", key)
        try:
            return SRPairs(_nchw(lr_arr), _nchw(hr_arr), scale, f"{root} (hr/ + lr/)")
        except ValueError as e:
            raise ConfigError(f"{key}: {e} (data.scale is {scale})") from None
    folder = root / "hr" if (root / "hr").is_dir() else root
    return make_pairs(_nchw(_stack(_read_folder(folder, key), patch_size, folder, key)), scale, str(root))


def _subset(hr: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= hr.shape[0]:
        return hr
    order = torch.randperm(hr.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return hr[order.sort().values]


def load_sr_data(cfg: Any) -> tuple[SRPairs, SRPairs | None]:
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
        def folder(value: str, key: str, n: int | None) -> SRPairs:
            pairs = read_pair_folder(existing_folder(value, cfg.base_dir, key), s, key, d.patch_size)
            if n is None or n >= len(pairs):
                return pairs
            keep = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(d.subset_seed))[:n].sort().values
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
