"""Loading segmentation data: TexMosaic (built from scikit-image's texture photographs) or folders of images and
mask PNGs."""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.config import ConfigError
from distill.core.batch import IGNORE_INDEX, Batch
from distill.data.image_files import header_size, image_files, pad_stack, resized_size, several_sizes
from distill.data.image_tables import DataReadError
from distill.data.images import to_rgb, upright
from distill.data.textures import load_textures, row_split
from distill.tasks.common import existing_folder


@dataclass
class SegmentationArrays:
    """Images (uint8, N x C x H x W) and their per-pixel labels (int64, N x H x W; ``IGNORE_INDEX`` = no label).
    ``sizes`` (N x 2, or None when every image fills the tensor): the (H, W) of each image, top left, when images
    of several sizes (``data.resize: shorter_side``) are padded to the largest (black pixels, masks
    ``IGNORE_INDEX``)."""

    images: torch.Tensor
    masks: torch.Tensor
    num_classes: int
    source: str = ""
    # an init-only argument kept as a plain attribute, not a field: the teacher cache's data fingerprint walks the
    # fields, and sets of one size (every set before sizes existed) keep their fingerprint
    sizes: InitVar[torch.Tensor | None] = None

    def __post_init__(self, sizes: torch.Tensor | None = None) -> None:
        self.sizes = sizes
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.masks.dim() != 3 or self.masks.shape[0] != self.images.shape[0] \
                or self.masks.shape[1:] != self.images.shape[2:]:
            raise ValueError(f"masks must be N x H x W matching the images {tuple(self.images.shape)}, got "
                             f"{tuple(self.masks.shape)}")
        self.masks = self.masks.long()
        if self.sizes is not None and tuple(self.sizes.shape) != (self.images.shape[0], 2):
            raise ValueError(f"sizes must be N x 2, got {tuple(self.sizes.shape)}")
        bad = (self.masks != IGNORE_INDEX) & ((self.masks < 0) | (self.masks >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"mask values must be in [0, {self.num_classes}) or {IGNORE_INDEX}; found "
                             f"{int(self.masks[bad][0])}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


# -- TexMosaic -------------------------------------------------------------------------------------------------
def texmosaic(n: int, seed: int, split: str, *, textures: tuple[str, ...] = ("brick", "grass", "gravel"),
              size: int = 64, min_regions: int = 2, max_regions: int = 4, split_row: int = 320,
              sources: dict[str, np.ndarray] | None = None) -> SegmentationArrays:
    """``n`` TexMosaic samples of ``split`` (``train``: crops from rows [0, split_row) of each photograph; ``test``:
    rows [split_row, H)). Each sample: k ~ U{min_regions..max_regions} seed points uniform on the canvas; every pixel
    belongs to its nearest seed (a Voronoi partition); each region gets a texture drawn uniformly and is filled from
    its own random ``size`` x ``size`` crop of that texture. The gray value is copied to 3 channels."""
    if not 1 <= min_regions <= max_regions:
        raise ValueError(f"need 1 <= min_regions <= max_regions, got {min_regions}, {max_regions}")
    photos = sources if sources is not None else load_textures(textures)
    parts = []
    for name in textures:
        img = photos[name]
        if img.ndim == 3:
            img = img.mean(-1)
        part = row_split(img, split, split_row)
        if part.shape[0] < size or part.shape[1] < size:
            raise ValueError(f"texture {name!r}: the {split} rows ({part.shape[0]} x {part.shape[1]}) are smaller "
                             f"than one {size} x {size} crop")
        parts.append(np.round(part * 255.0).astype(np.uint8))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(min_regions, max_regions + 1))
        pts = rng.uniform(0, size, size=(k, 2))
        d2 = (yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2
        region = d2.argmin(0)
        cls = rng.integers(0, len(textures), size=k)
        canvas = np.empty((size, size), dtype=np.uint8)
        for r in range(k):
            src = parts[int(cls[r])]
            y0 = int(rng.integers(0, src.shape[0] - size + 1))
            x0 = int(rng.integers(0, src.shape[1] - size + 1))
            crop = src[y0:y0 + size, x0:x0 + size]
            sel = region == r
            canvas[sel] = crop[sel]
        images[i] = canvas
        masks[i] = cls[region]
    imgs = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1).contiguous()
    return SegmentationArrays(imgs, torch.from_numpy(masks), len(textures),
                              f"TexMosaic {split} ({n} mosaics, seed {seed}, textures {', '.join(textures)})")


# -- folders of images and masks -----------------------------------------------------------------------------------
def _files(folder: Path, key: str) -> dict[str, Path]:
    """The images of ``folder`` by file stem; hidden files (``.*``, e.g. macOS ``._name.jpg``) are skipped and two
    files of the same stem (``a.jpg`` and ``a.png``) are refused, naming both."""
    out: dict[str, Path] = {}
    for p in image_files(folder):
        if p.stem in out:
            raise ConfigError(f"{key}: {folder} holds {out[p.stem].name} and {p.name}: two files of one stem (the "
                              "stem pairs an image with its mask); keep one")
        out[p.stem] = p
    return out


#: the suffix of a mask's stem that is also accepted (``a.jpg`` <-> ``a_mask.png``, as many data sets name them)
MASK_STEM_SUFFIX = "_mask"


def mask_pairs(root: Path, key: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of ``root/images/*`` and ``root/masks/*``, paired by file stem (the mask ``<stem>.png``
    or ``<stem>_mask.png``); an image without a mask is refused, naming it."""
    img_dir, mask_dir = root / "images", root / "masks"
    for sub in (img_dir, mask_dir):
        if not sub.is_dir():
            raise ConfigError(f"{key}: {root} needs the subfolders images/ and masks/ ({sub.name}/ is missing)")
    imgs, all_masks = _files(img_dir, key), _files(mask_dir, key)
    if not imgs:
        raise ConfigError(f"{key}: {img_dir} holds no images")
    masks = {stem: all_masks.get(stem) or all_masks.get(stem + MASK_STEM_SUFFIX) for stem in imgs}
    missing = sorted(stem for stem, m in masks.items() if m is None)
    if missing:
        raise ConfigError(f"{key}: no mask in {mask_dir} for image(s) {', '.join(missing[:5])}"
                          f"{f' (+{len(missing) - 5} more)' if len(missing) > 5 else ''} (a mask is <stem>.png "
                          f"or <stem>{MASK_STEM_SUFFIX}.png)")
    return [(path, masks[stem]) for stem, path in imgs.items()]  # type: ignore[misc]


def color_values(y: np.ndarray, colors: dict[int, int] | None, key: str, name: str) -> np.ndarray:
    """The stored values of an H x W x 3 RGB mask: each colour's value from ``colors`` (packed ``R << 16 | G << 8 |
    B``, ``data.mask_colors``), or, without it, the gray level of a mask whose three channels are equal."""
    packed = y[..., 0] << 16 | y[..., 1] << 8 | y[..., 2]
    if colors is None:
        if (y[..., 0] == y[..., 1]).all() and (y[..., 1] == y[..., 2]).all():
            return y[..., 0].copy()
        found = [f"{v >> 16},{v >> 8 & 255},{v & 255}" for v in np.unique(packed)[:4].tolist()]
        raise DataReadError(f"{key}: mask {name} is colour-coded (colours {found}...); give each colour's class in "
                            "data.mask_colors, e.g. {\"0,0,0\": 0, \"128,0,0\": 1}")
    codes = np.array(sorted(colors), dtype=np.int64)
    values = np.array([colors[c] for c in codes.tolist()], dtype=np.int64)
    at = np.clip(np.searchsorted(codes, packed), 0, len(codes) - 1)
    unknown = codes[at] != packed
    if unknown.any():
        v = int(packed[unknown][0])
        raise DataReadError(f"{key}: mask {name} holds the colour {v >> 16},{v >> 8 & 255},{v & 255} "
                            f"(pixels: {int(unknown.sum())}), which data.mask_colors does not list")
    return values[at]


def read_image_mask(path: Path, mpath: Path, key: str, image_size: int | None,
                    resize: str = "shorter_side",
                    colors: dict[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(3 x H x W uint8 image, H x W int64 mask as stored) of one pair, both upright, resized to ``image_size``
    if given (image bilinear, mask nearest neighbour) as ``resize`` says
    (:func:`distill.data.image_files.resized_size`); ``longer_side_pad`` then pads both at the bottom and right to
    ``image_size`` square (image black, mask ``IGNORE_INDEX``). A file that cannot be read, a mask that is not
    single-channel or a size mismatch raise :class:`DataReadError` naming ``key`` and the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = to_rgb(upright(im))
        with Image.open(mpath) as mk:
            if mk.mode not in ("L", "P", "I", "I;16", "1", "RGB", "RGBA"):
                raise DataReadError(f"{key}: mask {mpath.name} has mode {mk.mode}; a mask is one class "
                                    "index per pixel (a single-channel or palette PNG, or colours: data.mask_colors)")
            mask = upright(mk).copy()
            if mask.mode == "RGBA":
                mask = mask.convert("RGB")
    except OSError as e:
        raise DataReadError(f"{key}: {path.name}: {e}") from None
    if rgb.size != mask.size:
        raise DataReadError(f"{key}: {path.name} is {rgb.size} but its mask is {mask.size}")
    if image_size is not None:
        h, w = resized_size(rgb.size[1], rgb.size[0], image_size, resize)
        rgb = rgb.resize((w, h), Image.BILINEAR)
        mask = mask.resize((w, h), Image.NEAREST)
    x, y = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1), np.array(mask, dtype=np.int64)
    if y.ndim == 3:  # an RGB mask, resized by nearest neighbour (its colours kept exactly)
        y = color_values(y, colors, key, mpath.name)
    if image_size is not None and resize == "longer_side_pad":
        canvas = np.zeros((3, image_size, image_size), dtype=np.uint8)
        canvas[:, :x.shape[1], :x.shape[2]] = x
        labels = np.full((image_size, image_size), IGNORE_INDEX, dtype=np.int64)
        labels[:y.shape[0], :y.shape[1]] = y
        x, y = canvas, labels
    return x, y


def map_mask(y: np.ndarray, ignore_value: int | None, label_map: dict[int, int] | None) -> np.ndarray:
    """Stored mask values to class indices: ``label_map`` first, then ``ignore_value`` -> ``IGNORE_INDEX``."""
    if label_map:
        raw = y.copy()
        for value, cls in label_map.items():
            y[raw == value] = cls
    if ignore_value is not None:
        y[y == ignore_value] = IGNORE_INDEX
    return y


def read_mask_folders(root: Path, key: str, *, ignore_value: int | None = 255, image_size: int | None = None,
                      num_classes: int | None = None, label_map: dict[int, int] | None = None,
                      resize: str = "shorter_side", colors: dict[int, int] | None = None) -> SegmentationArrays:
    """``root/images/*`` and ``root/masks/*`` (PNG: one class index per pixel, ``ignore_value`` = no label), paired
    by file stem (the mask ``<stem>.png`` or ``<stem>_mask.png``). ``label_map`` maps stored mask values to class
    indices first (``{255: 1}``: a binary mask saved as 0/255). Images become RGB; images and masks are turned
    upright by their EXIF orientation (:func:`distill.data.images.upright`). A mask that is not single-channel is
    refused, as is a mask value at or above ``num_classes`` (naming the file), and, with ``ignore_value`` None and
    no ``num_classes``, a mask holding 255 (which would make 256 classes). ``image_size`` resizes as ``resize``
    says (:func:`read_image_mask`); with ``shorter_side`` the resized images may differ in size: they are padded
    to the largest (``sizes`` holds each one's)."""
    pairs = mask_pairs(root, key)
    xs, ys, names = [], [], []
    for path, mpath in pairs:
        try:
            x, y = read_image_mask(path, mpath, key, image_size, resize, colors)
        except DataReadError as e:
            raise ConfigError(str(e)) from None
        xs.append(x)
        ys.append(y)
        names.append((path.name, mpath.name))
    shapes = {x.shape for x in xs}
    sizes = None
    if len(shapes) > 1 and image_size is not None and resize == "shorter_side":
        stacked, sizes = pad_stack([torch.from_numpy(np.ascontiguousarray(x)) for x in xs])
        y_all = pad_stack([torch.from_numpy(y) for y in ys], fill=IGNORE_INDEX)[0].numpy()
        xs, ys = list(stacked.numpy()), list(y_all)
    elif len(shapes) > 1:
        first = {}
        for x, (n, _) in zip(xs, names, strict=True):
            first.setdefault(x.shape[1:], n)
        sizes = ", ".join(f"{n}: {h} x {w}" for (h, w), n in list(first.items())[:3])
        raise ConfigError(f"{key}: the images have several sizes ({sizes}...); set data.image_size")
    y = map_mask(np.stack(ys), ignore_value, label_map)
    if ignore_value is None and num_classes is None and (y == 255).any():
        where = int(np.argmax((y == 255).reshape(len(ys), -1).any(1)))
        raise ConfigError(f"data.ignore_value: null, but the mask {names[where][1]} of {key} holds the value 255 "
                          "(the usual mark of unlabelled pixels), which would make 256 classes; set "
                          "data.ignore_value: 255 to ignore those pixels, data.label_map to map 255 to a class, or "
                          "data.num_classes (256 or more) if 255 is a class index")
    found = int(y.max()) + 1 if (y >= 0).any() else 1
    classes = num_classes or found
    if found > classes:
        where = int(np.argmax((y >= classes).reshape(len(ys), -1).any(1)))
        raise ConfigError(f"data.num_classes: {classes}, but {key} has mask value {found - 1} (first in "
                          f"{names[where][1]}); class indices are 0..{classes - 1}"
                          f"{f' and {ignore_value} (data.ignore_value)' if ignore_value is not None else ''}")
    if ignore_value is not None and not (y > 0).any() and (y == 0).any() and (y == IGNORE_INDEX).any():
        raise ConfigError(f"data.ignore_value: every labelled pixel of {key} is class 0 and the others are "
                          f"{ignore_value} (ignored): binary masks saved as 0/{ignore_value}? Set data.label_map: "
                          f"{{{ignore_value}: 1}} to make {ignore_value} the class 1")
    return SegmentationArrays(torch.from_numpy(np.stack(xs)), torch.from_numpy(y), classes, f"{root}", sizes)


# -- streamed folders (data.streaming) -----------------------------------------------------------------------------
@dataclass
class StreamedMasks:
    """The image/mask pairs of a ``source: folders`` set read one pair at a time (``data.streaming``): paths and
    image sizes only, no pixels. ``sizes[i]``: (H, W) of pair ``i`` as read (resized, if ``image_size``).
    ``crop_size`` (training): the trainer's fetches come with their crops' corners and are cut where the pair is
    read (:meth:`SemanticSegmentation.fetch`); a batch fetched without them holds whole images, zero-padded to the
    largest, with ``meta["uncut"]`` (their sizes), for :meth:`SemanticSegmentation.prepare` to cut.
    ``resize``: how ``image_size`` fits each image (:func:`read_image_mask`); with ``shorter_side`` a batch of
    whole images of several sizes is padded to the largest (black, masks ``IGNORE_INDEX``: the padding is not
    scored)."""

    image_files: list[Path]
    mask_files: list[Path]
    sizes: list[tuple[int, int]]
    num_classes: int
    image_size: int | None = None
    ignore_value: int | None = 255
    label_map: dict[int, int] | None = None
    crop_size: int | None = None
    key: str = "data.train"
    source: str = ""
    resize: str = "shorter_side"
    colors: dict[int, int] | None = None  # data.mask_colors, packed (:func:`color_values`)

    def __len__(self) -> int:
        return len(self.image_files)

    @property
    def pads(self) -> bool:
        """Whole images of several sizes share a batch, padded (``image_size`` with ``resize: shorter_side``)."""
        return self.image_size is not None and self.resize == "shorter_side"

    @property
    def input_shape(self) -> list[int]:
        side = self.crop_size
        return [3, side, side] if side is not None else [3, *self.sizes[0]]

    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3 x H x W uint8 image, H x W int64 class indices) of pair ``i``, decoded now; a mask value outside
        the classes raises :class:`DataReadError` naming ``data.num_classes`` and the file."""
        x, y = read_image_mask(self.image_files[i], self.mask_files[i], self.key, self.image_size, self.resize,
                               self.colors)
        if x.shape[1:] != self.sizes[i]:
            raise DataReadError(f"{self.key}: {self.image_files[i].name} decodes to {x.shape[1]} x {x.shape[2]}, "
                                f"not the {self.sizes[i][0]} x {self.sizes[i][1]} its header gave")
        y = map_mask(y, self.ignore_value, self.label_map)
        bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= self.num_classes))
        if bad.any():
            ignored = f" and {self.ignore_value} (data.ignore_value)" if self.ignore_value is not None else ""
            raise DataReadError(f"data.num_classes: {self.num_classes}, but the mask {self.mask_files[i].name} of "
                                f"{self.key} holds the value {int(y[bad].max())}; class indices are "
                                f"0..{self.num_classes - 1}{ignored}")
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    def fetch(self, indices: torch.Tensor) -> Batch:
        idx = indices.tolist()
        pairs = [self.read(k) for k in idx]
        if self.crop_size is not None:
            images, sizes = pad_stack([x for x, _ in pairs])
            masks = pad_stack([y for _, y in pairs], fill=IGNORE_INDEX)[0]
            return Batch(inputs=images, labels=masks, indices=indices,
                         meta={"uncut": sizes, "patch": int(self.crop_size)})
        named = several_sizes([self.image_files[k].name for k in idx], [tuple(x.shape[1:]) for x, _ in pairs])
        if named and self.pads:
            images = pad_stack([x for x, _ in pairs])[0]
            masks = pad_stack([y for _, y in pairs], fill=IGNORE_INDEX)[0]
            return Batch(inputs=images, labels=masks, indices=indices, meta={})
        if named:
            raise DataReadError(f"{self.key}: one batch holds images of several sizes ({named}); set "
                                "data.image_size or data.crop_size, or train.eval_batch_size: 1")
        return Batch(inputs=torch.stack([x for x, _ in pairs]), labels=torch.stack([y for _, y in pairs]),
                     indices=indices, meta={})


def stream_mask_folders(root: Path, key: str, d: Any, *, train: bool, single_batch: bool = False) -> StreamedMasks:
    """:class:`StreamedMasks` of ``root`` (``images/`` + ``masks/``, paired as :func:`read_mask_folders` pairs
    them), reading only the images' headers now (none with ``image_size``). ``d``: the ``data`` section; its
    ``num_classes`` is required (the masks are not all read up front). Without ``crop_size`` (training) or
    ``single_batch`` (evaluation one image per batch), the images must share one size, unless ``image_size``
    with ``resize: shorter_side`` gives them several: training then cuts ``image_size`` squares (unless
    ``crop_size`` is set) and evaluation pads each batch."""
    pairs = mask_pairs(root, key)
    names = [p.name for p, _ in pairs]
    resize = getattr(d, "resize", "stretch")
    if d.image_size is not None and resize != "shorter_side":  # stretched, or padded to image_size square
        sizes = [(d.image_size, d.image_size)] * len(pairs)
    elif d.image_size is not None:
        sizes = [resized_size(*header_size(p, key), d.image_size, resize) for p, _ in pairs]
    else:
        sizes = [header_size(p, key) for p, _ in pairs]
    crop = d.crop_size if train else None
    if train and crop is None and d.image_size is not None and several_sizes(names, sizes):
        crop = d.image_size  # shorter_side: the standard resize-then-random-crop
    if crop is not None:
        small = [(n, s) for n, s in zip(names, sizes, strict=True) if min(s) < crop]
        if small:
            raise ConfigError(f"data.crop_size: {crop} px is larger than {small[0][0]} in {root / 'images'} "
                              f"({small[0][1][0]} x {small[0][1][1]})")
    named = several_sizes(names, sizes)
    if named and crop is None and not single_batch and d.image_size is None:
        raise ConfigError(f"{key}: the images have several sizes ({named}...); set data.image_size"
                          + (" or data.crop_size" if train else " or train.eval_batch_size: 1"))
    return StreamedMasks([p for p, _ in pairs], [m for _, m in pairs], sizes, int(d.num_classes), d.image_size,
                         d.ignore_value, dict(d.label_map) if d.label_map else None, crop, key,
                         f"{root} (streamed)", resize, mask_colors(d))


def mask_colors(d: Any) -> dict[int, int] | None:
    """``data.mask_colors`` with each colour packed (``R << 16 | G << 8 | B``)."""
    from distill.tasks.segmentation.section import parse_color

    return {parse_color(k): int(v) for k, v in d.mask_colors.items()} if d.mask_colors else None


def load_segmentation_data(cfg: Any) -> tuple[SegmentationArrays | StreamedMasks,
                                              SegmentationArrays | StreamedMasks | None]:
    d = cfg.data
    if d.source == "texmosaic":
        t = d.texmosaic
        if t.min_regions > t.max_regions:
            raise ConfigError("data.texmosaic.min_regions: larger than data.texmosaic.max_regions")
        kw = dict(textures=tuple(t.textures), size=t.size, min_regions=t.min_regions, max_regions=t.max_regions,
                  split_row=t.split_row)
        try:
            sources = load_textures(t.textures)
        except ValueError as e:
            raise ConfigError(f"data.texmosaic.textures: {e}") from None
        try:
            train = texmosaic(t.train_size, t.train_seed, "train", sources=sources, **kw)
            evald = texmosaic(t.eval_size, t.eval_seed, "test", sources=sources, **kw)
        except ValueError as e:
            raise ConfigError(f"data.texmosaic: {e}") from None
        return train, evald
    if d.train is None:
        raise ConfigError("data.train: source: folders needs a folder with images/ and masks/")
    if d.streaming:
        if d.num_classes is None:
            raise ConfigError("data.num_classes: required with data.streaming (the masks are read when their batch "
                              "is, not all up front to find the classes); give the number of classes")
        one = getattr(getattr(cfg, "train", None), "eval_batch_size", None) == 1
        train_s = stream_mask_folders(existing_folder(d.train, cfg.base_dir, "data.train"), "data.train", d,
                                      train=True)
        eval_s = stream_mask_folders(existing_folder(d.eval, cfg.base_dir, "data.eval"), "data.eval", d,
                                     train=False, single_batch=one) if d.eval else None
        return train_s, eval_s
    kw2 = dict(ignore_value=d.ignore_value, image_size=d.image_size, num_classes=d.num_classes,
               label_map=d.label_map, resize=d.resize, colors=mask_colors(d))
    train = read_mask_folders(existing_folder(d.train, cfg.base_dir, "data.train"), "data.train", **kw2)
    evald = None
    if d.eval:
        evald = read_mask_folders(existing_folder(d.eval, cfg.base_dir, "data.eval"), "data.eval", **kw2)
        # without data.num_classes, the classes are those of both folders (the eval masks may hold the highest)
        train.num_classes = evald.num_classes = max(train.num_classes, evald.num_classes)
    return train, evald
