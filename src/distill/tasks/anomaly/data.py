"""Real texture photographs cut into crops, with synthetic defects that carry exact pixel masks.

The photographs are scikit-image's bundled ``brick``, ``grass`` and ``gravel`` (512 x 512, 8-bit gray; read from
the installed package, no network). Training crops come from rows above ``split_row`` and evaluation crops from
rows below it, so no pixel is shared. The defects are **synthetic** (none of the papers' data exists here): each
is a fixed, seeded transform of a normal evaluation crop that returns the changed crop and the mask of the pixels
it changed by design:

* ``ellipse``: an ellipse (semi-axes 5-14 px, any angle) pasted from another texture's evaluation rows;
* ``scratch``: a straight line 20-50 px long and 1-3 px wide, shifted by +60 or -60 gray levels (clipped);
* ``blob``: a Gaussian bump (sigma 3-7 px) of +-40 to 80 gray levels, kept where it is above 20 % of its peak;
* ``blur``: a disc (radius 6-12 px) replaced by a Gaussian blur (sigma 2) of the crop;
* ``hole``: an ellipse (semi-axes 4-10 px) filled with dark gray (15-40, with noise of sd 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.config import ConfigError
from distill.data.image_files import image_files
from distill.data.images import to_rgb, upright

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("ellipse", "scratch", "blob", "blur", "hole")


@dataclass
class AnomalyCrops:
    """``images``: uint8 (N, 1, S, S) (texture crops) or (N, 3, S, S) (folders); ``masks``: uint8 (N, S, S), 1 on
    defect pixels (all 0 for normal crops)."""

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """Image labels: 1 where the crop holds a defect."""
        return self.masks.flatten(1).amax(dim=1).long()


def texture(name: str) -> np.ndarray:
    """The 512 x 512 uint8 photograph ``name`` from scikit-image (``pip install scikit-image``: extra ``vision``)."""
    if name not in TEXTURES:
        raise ConfigError(f"data.texture: unknown texture {name!r}; allowed: {', '.join(TEXTURES)}")
    try:
        import skimage.data
    except ImportError:
        raise ConfigError("data.texture: scikit-image is not installed: pip install 'distill[vision]'") from None
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 3:  # a colour version of the photograph: its luminance
        img = (img[..., :3] @ np.array([0.299, 0.587, 0.114])).round().clip(0, 255).astype(np.uint8)
    return img


def random_crops(img: np.ndarray, n: int, size: int, rows: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``n`` crops of ``size`` px whose rows all lie in ``[rows[0], rows[1])``: (n, size, size) uint8."""
    lo, hi = rows
    if hi - lo < size:
        raise ConfigError(f"data.crop: {size} px does not fit in rows {lo}..{hi}")
    ys = rng.integers(lo, hi - size + 1, n)
    xs = rng.integers(0, img.shape[1] - size + 1, n)
    return np.stack([img[y:y + size, x:x + size] for y, x in zip(ys, xs, strict=True)])


def _ellipse(size: int, cy: float, cx: float, ay: float, ax: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = int(4 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img.astype(np.float64), r, mode="reflect")
    p = np.apply_along_axis(lambda row: np.convolve(row, k, mode="valid"), 1, p)
    return np.apply_along_axis(lambda col: np.convolve(col, k, mode="valid"), 0, p)


def add_defect(crop: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``crop`` (S, S) uint8 with a synthetic defect of ``kind``, and its mask (S, S) uint8 (see the module
    docstring). ``donor``: a crop of another texture, for ``ellipse``."""
    size = crop.shape[0]
    out = crop.astype(np.float64)
    margin = size / 4
    cy, cx = rng.uniform(margin, size - margin, 2)
    if kind == "ellipse":
        if donor is None:
            raise ValueError("an 'ellipse' defect needs a donor crop of another texture")
        mask = _ellipse(size, cy, cx, rng.uniform(5, 14), rng.uniform(5, 14), rng.uniform(0, math.pi))
        out[mask] = donor.astype(np.float64)[mask]
    elif kind == "scratch":
        length, width, angle = rng.uniform(20, 50), int(rng.integers(1, 4)), rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        dy, dx = math.sin(angle), math.cos(angle)
        along = (xx - cx) * dx + (yy - cy) * dy
        across = -(xx - cx) * dy + (yy - cy) * dx
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
        out[mask] += 60.0 if rng.random() < 0.5 else -60.0
    elif kind == "blob":
        sigma, amp = rng.uniform(3, 7), rng.uniform(40, 80) * (1 if rng.random() < 0.5 else -1)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        mask = w >= 0.2
        out[mask] += amp * w[mask]
    elif kind == "blur":
        radius = rng.uniform(6, 12)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        out[mask] = _blur(crop, 2.0)[mask]
    elif kind == "hole":
        mask = _ellipse(size, cy, cx, rng.uniform(4, 10), rng.uniform(4, 10), rng.uniform(0, math.pi))
        out[mask] = rng.uniform(15, 40) + rng.normal(0, 4, int(mask.sum()))
    else:
        raise ValueError(f"unknown defect {kind!r}; allowed: {', '.join(DEFECTS)}")
    return out.round().clip(0, 255).astype(np.uint8), mask.astype(np.uint8)


def train_crops(name: str, n: int, size: int = 64, split_row: int = 320, seed: int = 0) -> AnomalyCrops:
    """``n`` normal training crops of texture ``name`` from rows ``[0, split_row)``."""
    crops = random_crops(texture(name), n, size, (0, split_row), np.random.default_rng(seed))
    return AnomalyCrops(torch.from_numpy(crops)[:, None].contiguous(), torch.zeros(n, size, size, dtype=torch.uint8))


def eval_crops(name: str, n_normal: int, n_defect: int, size: int = 64, split_row: int = 320, seed: int = 1234,
               defects: tuple[str, ...] | list[str] = DEFECTS) -> AnomalyCrops:
    """``n_normal`` normal crops, then ``n_defect`` crops with synthetic defects (``defects`` in turn), all from
    rows ``[split_row, 512)``; the same seed gives the same crops, defects and masks."""
    rng = np.random.default_rng([seed, TEXTURES.index(name)])
    img = texture(name)
    rows = (split_row, img.shape[0])
    normal = random_crops(img, n_normal + n_defect, size, rows, rng)
    others = [texture(t) for t in TEXTURES if t != name]
    images, masks = [normal[:n_normal]], [np.zeros((n_normal, size, size), np.uint8)]
    for i in range(n_defect):
        kind = defects[i % len(defects)]
        donor = random_crops(others[i % len(others)], 1, size, rows, rng)[0] if kind == "ellipse" else None
        crop, mask = add_defect(normal[n_normal + i], kind, rng, donor)
        images.append(crop[None])
        masks.append(mask[None])
    return AnomalyCrops(torch.from_numpy(np.concatenate(images))[:, None].contiguous(),
                        torch.from_numpy(np.concatenate(masks)))


def _read_rgb(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image resized to ``size`` (3 x size x size uint8), turned upright by its EXIF orientation, and its upright
    (width, height) before resizing."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = to_rgb(upright(im))
            return np.asarray(rgb.resize((size, size), Image.BILINEAR), dtype=np.uint8).transpose(2, 0, 1), rgb.size
    except OSError as e:
        raise ConfigError(f"data.root: {path}: {e}") from None


def _read_mask(path: Path, image: Path, want: tuple[int, int], size: int) -> np.ndarray:
    """The mask of ``image`` (whose upright size is ``want``) as size x size 0/1, upright by its own EXIF tag."""
    from PIL import Image

    try:
        with Image.open(path) as mk:
            mk_up = upright(mk)
            if mk_up.size != want:
                raise ConfigError(f"data.root: {path} is {mk_up.size[0]} x {mk_up.size[1]} but its image {image} is "
                                  f"{want[0]} x {want[1]}")
            mask = mk_up.convert("L").resize((size, size), Image.NEAREST)
    except OSError as e:
        raise ConfigError(f"data.root: {path}: {e}") from None
    return (np.asarray(mask) > 0).astype(np.uint8)


def read_mvtec_folder(root: Path, size: int) -> tuple[AnomalyCrops, AnomalyCrops | None]:
    """One MVTec AD category folder (see :class:`distill.tasks.anomaly.section.AnomalyData`): the normal training
    images of ``train/good`` and the evaluation images of ``test/*`` with their ``ground_truth`` masks, resized
    to ``size`` and RGB. ``test/`` may be absent (no evaluation); a defective test image without a mask is
    refused, naming the file and where its mask was looked for."""
    train_dir = root / "train" / "good"
    if not train_dir.is_dir():
        raise ConfigError(f"data.root: {root} has no train/good/ folder (the MVTec AD layout: train/good/, "
                          "test/good/, test/<defect>/, ground_truth/<defect>/<stem>_mask.png)")
    files = image_files(train_dir)
    if not files:
        raise ConfigError(f"data.root: {train_dir} holds no images")
    train = np.stack([_read_rgb(p, size)[0] for p in files])
    train_set = AnomalyCrops(torch.from_numpy(train), torch.zeros(len(files), size, size, dtype=torch.uint8))
    test_dir = root / "test"
    if not test_dir.is_dir():
        return train_set, None
    images, masks = [], []
    for kind in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in image_files(kind):
            arr, img_size = _read_rgb(img, size)
            images.append(arr)
            if kind.name == "good":
                masks.append(np.zeros((size, size), np.uint8))
                continue
            gt = root / "ground_truth" / kind.name
            found = [m for m in (gt / f"{img.stem}_mask.png", gt / f"{img.stem}.png") if m.is_file()]
            if not found:
                raise ConfigError(f"data.root: no mask for the defective test image {img} (looked for "
                                  f"{gt / (img.stem + '_mask.png')} and {img.stem}.png)")
            masks.append(_read_mask(found[0], img, img_size, size))
    if not images:
        raise ConfigError(f"data.root: {test_dir} holds no images (test/good/, test/<defect>/)")
    labels = [int(m.any()) for m in masks]
    if len(set(labels)) < 2:
        raise ConfigError(f"data.root: {test_dir} holds only {'defective' if labels[0] else 'normal'} images; the "
                          "AUROCs need both (test/good/ and test/<defect>/ with masks)")
    return train_set, AnomalyCrops(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)))


def load_anomaly_data(cfg: object) -> tuple[AnomalyCrops, AnomalyCrops | None]:
    """The training and evaluation crops of a config's ``data:`` section."""
    d = cfg.data  # type: ignore[attr-defined]
    if d.source == "folders":
        from distill.tasks.common import existing_folder

        if d.root is None:
            raise ConfigError("data.root: source: folders needs a category folder (train/good/, test/, "
                              "ground_truth/)")
        return read_mvtec_folder(existing_folder(d.root, cfg.base_dir, "data.root"), d.image_size)  # type: ignore[attr-defined]
    if d.split_row + d.crop > 512 or d.split_row < d.crop:
        raise ConfigError(f"data.split_row: {d.split_row} leaves no room for {d.crop}-px crops on both sides")
    train = train_crops(d.texture, d.train_crops, d.crop, d.split_row, d.subset_seed)
    evald = (eval_crops(d.texture, d.eval_normal, d.eval_defect, d.crop, d.split_row, d.eval_seed, d.defects)
             if d.eval_normal + d.eval_defect else None)
    return train, evald
