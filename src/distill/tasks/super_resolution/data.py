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


def _read_folder(folder: Path, key: str) -> tuple[list[str], torch.Tensor]:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{key}: {folder} holds no images")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except OSError as e:
            raise ConfigError(f"{key}: {p.name}: {e}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ConfigError(f"{key}: the images in {folder} have several sizes ({sorted(shapes)[:3]}); crop them to "
                          "one size (a batch holds equal-sized images)")
    return [p.stem for p in files], torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_pair_folder(root: Path, scale: int, key: str) -> SRPairs:
    """A folder of high-resolution images, or ``hr/`` and ``lr/`` subfolders with the same file stems."""
    if (root / "hr").is_dir() and (root / "lr").is_dir():
        hs, hr = _read_folder(root / "hr", key)
        ls, lr = _read_folder(root / "lr", key)
        if hs != ls:
            raise ConfigError(f"{key}: hr/ and lr/ must hold the same file names ({sorted(set(hs) ^ set(ls))[:5]})")
        try:
            return SRPairs(lr, hr, scale, f"{root} (hr/ + lr/)")
        except ValueError as e:
            raise ConfigError(f"{key}: {e} (data.scale is {scale})") from None
    _, hr = _read_folder(root / "hr" if (root / "hr").is_dir() else root, key)
    return make_pairs(hr, scale, str(root))


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
        train = read_pair_folder(existing_folder(d.train, cfg.base_dir, "data.train"), s, "data.train")
        evald = read_pair_folder(existing_folder(d.eval, cfg.base_dir, "data.eval"), s, "data.eval") \
            if d.eval else None
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
