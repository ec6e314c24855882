"""Loading the image family's data from its ``data:`` section."""

from __future__ import annotations

import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.config import ConfigError
from distill.core.safe_pickle import config_key
from distill.data.augment import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.data.image_tables import TableImages
from distill.data.images import ImageArrays, detect_image_format, load_images
from distill.tasks.common import existing_path
from distill.tasks.image.section import ImageData
from distill.tasks.image.task import ImageClassification
from distill.train.distributed import main_process_first

#: what the family trains on: images in memory, or read per batch from a ``datasets`` table (``data.streaming``)
Images = ImageArrays | TableImages


def read_image_table(d: ImageData, file: Path, split: str, key: str,
                     classes: list[str] | None, mixture: Any = None) -> ImageArrays | TableImages:
    """``data.format`` other than ``auto``: the images of a ``datasets`` table, decoded per batch when
    ``data.streaming`` is on, else all at once. ``mixture``: a ``teacher.mixture`` with ``route: column``, whose
    ``column`` is a column of the table read as each image's member (the images are then :class:`RoutedImages`)."""
    from distill.data.image_tables import table_images
    from distill.data.tables import read_table

    route = mixture.column if mixture is not None else None
    if route is not None and d.streaming:
        raise ConfigError(f"teacher.mixture.column: {route!r} is read from the table with the images in memory; "
                          "set data.streaming: false (a streamed table carries no route column)")
    table = read_table(file, d.format, f"data.{key}", split=split, split_key=f"data.{key}_split",
                       cache_dir=d.cache_dir)
    values = None
    if route is not None:
        if route not in table.column_names:
            raise ConfigError(f"teacher.mixture.column: {file.name} has no column {route!r}; its columns: "
                              f"{', '.join(table.column_names)}")
        values = np.asarray(list(table[route]), dtype=object)
    images = table_images(table, file, image_column=d.image_column, label_column=d.label_column, key=f"data.{key}",
                          image_size=d.image_size, classes=classes, integer_labels=d.integer_labels)
    if len(images):
        images.image_shape()  # an unreadable first image is refused now, naming the key
    if values is not None:  # one row per image, in the table's order
        from distill.core.mixture import route_indices

        arrays = images.to_arrays()
        return RoutedImages(arrays.images, arrays.labels, arrays.classes, arrays.source,
                            route_indices(values, mixture.names(), "teacher.mixture.column"))
    return images if d.streaming else images.to_arrays()


@dataclass
class RoutedImages(ImageArrays):
    """Images with each one's mixture member (``routes``: (N,) long, ``teacher.mixture`` with ``route: column``);
    subsets and label hiding keep each image's route."""

    routes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.routes is None or self.routes.shape != (len(self),) or self.routes.dtype != torch.int64:
            raise ValueError(f"RoutedImages.routes must be an int64 tensor of shape ({len(self)},)")

    def subset(self, indices: Any) -> RoutedImages:
        out = super().subset(indices)
        idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.to(torch.int64)
        return RoutedImages(out.images, out.labels, out.classes, out.source, self.routes.index_select(0, idx))

    def hide_labels(self, keep_per_class: int, seed: int) -> RoutedImages:
        out = super().hide_labels(keep_per_class, seed)
        return RoutedImages(out.images, out.labels, out.classes, out.source, self.routes)


def read_routes(cfg: Any, file: Path, split: str, n: int) -> torch.Tensor:
    """``teacher.mixture.column``: the array of that name (or ``NAME_SPLIT``) in the ``data.train`` npz file, one
    member name or index per image, as member indices."""
    from distill.core.mixture import route_indices

    column = cfg.teacher.mixture.column
    if file.suffix.lower() != ".npz":
        raise ConfigError(f"teacher.mixture.column: {column!r} is read from an .npz data.train file (an array beside "
                          f"the images) or a table (data.format: csv, jsonl, parquet or arrow; a column beside the "
                          f"images), and {file.name} is neither")
    with np.load(file, allow_pickle=False) as z:
        names = [k for k in (f"{column}_{split}", column) if k in z.files]
        if not names:
            raise ConfigError(f"teacher.mixture.column: {file.name} has no array {column!r}; its arrays: "
                              f"{', '.join(z.files)}")
        try:
            values = z[names[0]]
        except ValueError:
            raise ConfigError(f"teacher.mixture.column: {file.name}[{names[0]!r}] is an object array (needs pickle, "
                              "never loaded); store ints or strings") from None
    if values.reshape(-1).shape[0] != n:
        raise ConfigError(f"teacher.mixture.column: {file.name}[{names[0]!r}] has {values.size} values for {n} "
                          "images; give one per image")
    return route_indices(values, cfg.teacher.mixture.names(), "teacher.mixture.column")


def route_column(cfg: Any) -> bool:
    mix = getattr(cfg.teacher, "mixture", None) if cfg.teacher is not None else None
    return mix is not None and mix.route == "column"


def integer_classes(data: ImageArrays, mode: str, classes: list[str] | None, where: str) -> ImageArrays:
    """The label space of images whose classes are numbered, not named (an npz without a ``classes`` array: classes
    ``"0".."K-1"``), as ``data.integer_labels`` says (:mod:`distill.data.labels`): the training split's labels
    must be 0..K-1 (or are taken as names, or kept as indices); with ``names`` an evaluation split (``classes``:
    the training split's) is mapped onto them by name. Named classes are taken as they are."""
    from distill.data.images import UNLABELED
    from distill.data.labels import index_integer_labels, map_by_name

    if data.classes != [str(i) for i in range(len(data.classes))]:
        return data
    labels = data.labels.numpy()
    if classes is None:
        values, names = index_integer_labels(labels, mode, where, ignore=UNLABELED)
    elif mode == "names":
        values, names = map_by_name(labels, list(classes), where, ignore=UNLABELED), list(classes)
    else:
        return data
    if names == data.classes:
        return data
    return ImageArrays(data.images, torch.from_numpy(values), names, data.source)


def load_split(d: ImageData, path: str, split: str, per_class: int | None, base_dir: str | None,
               key: str, cfg: Any = None, classes: list[str] | None = None) -> ImageArrays | TableImages:
    file = existing_path(path, base_dir, f"data.{key}")  # an archive, an npz, a batches or an image folder
    if d.cache_dir is not None and Path(d.cache_dir).expanduser().is_file():
        raise ConfigError(f"data.cache_dir: {d.cache_dir} is a file, not a folder")
    try:
        with config_key(f"data.{key}"):
            if d.format == "auto":
                # class folders (folders, archives) are numbered by the training split's classes, so an evaluation
                # split without some class keeps the training labels; npz / CIFAR labels are numbers already
                named = classes is not None and detect_image_format(file) in ("folder", "tar")
                data = load_images(file, split=split, image_size=d.image_size, cache_dir=d.cache_dir,
                                   **({"classes": classes} if named else {}))
                data = integer_classes(data, d.integer_labels, classes, f"data.{key}: {file}")
            else:
                mixture = cfg.teacher.mixture if cfg is not None and route_column(cfg) else None
                data = read_image_table(d, file, split, key, classes, mixture)
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, RuntimeError, tarfile.TarError,
            zipfile.BadZipFile, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"data.{key}: {file}: {first}") from None
    if len(data) == 0:
        raise ConfigError(f"data.{key}: {file}: no images in split {split!r}")
    if cfg is not None and route_column(cfg) and not isinstance(data, RoutedImages):
        data = RoutedImages(data.images, data.labels, data.classes, data.source,
                            read_routes(cfg, file, split, len(data)))
    try:
        return data.balanced_subset(per_class, d.subset_seed) if per_class else data
    except ValueError as e:
        raise ConfigError(f"data.{key}_per_class: {str(e).splitlines()[0]}") from None


def load_image_data(cfg: Any) -> tuple[Images, Images | None, Images | None]:
    """(train, eval, val): several processes let rank 0 decode first (and fill ``data.cache_dir``)."""
    d: ImageData = cfg.data
    with main_process_first():
        train = load_split(d, d.train, d.train_split, d.train_per_class, cfg.base_dir, "train", cfg)
        evald = (load_split(d, d.eval, d.eval_split, d.eval_per_class, cfg.base_dir, "eval", classes=train.classes)
                 if d.eval else None)
    if evald is not None and evald.classes != train.classes:
        raise ConfigError(f"data.eval: its classes {evald.classes[:10]} differ from data.train's {train.classes[:10]} "
                          "(an evaluation split is numbered like the training split, by class name)")
    val = None
    key = "data.val_per_class"
    try:
        if d.val_per_class:
            val, train = train.split_off(d.val_per_class, d.subset_seed + 1)
        key = "data.labeled_per_class"
        if d.labeled_per_class:
            train = train.hide_labels(d.labeled_per_class, d.subset_seed + 2)
        key = "data.extra_val_per_class" if d.extra_val_per_class else "data.extra_unlabeled_per_class"
        if d.extra_val_per_class or d.extra_unlabeled_per_class:
            with main_process_first():
                train, extra_val = add_extra_splits(cfg, train)
            val = extra_val if extra_val is not None else val
        key = "data.noise_images"
        if d.noise_images:
            train = add_noise_images(train, d.noise_images, d.subset_seed + 3)
    except ValueError as e:  # too few images per class for the splits asked for
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    return train, evald, val


def add_extra_splits(cfg: Any, train: ImageArrays) -> tuple[ImageArrays, ImageArrays | None]:
    """``data.extra_val_per_class`` / ``extra_unlabeled_per_class``: (training set, validation set or None), the
    extra images drawn from the rest of the train split, outside the ``train_per_class`` subset (seed
    ``subset_seed``). The validation images come first (seed ``subset_seed + 1``), then the unlabelled ones from
    what is left (seed ``subset_seed + 2``), appended to ``train`` with ``UNLABELED`` labels; ``train`` itself (the
    labelled subset every arm shares) is kept unchanged and first."""
    import torch

    from distill.data.images import UNLABELED

    d: ImageData = cfg.data
    full = load_split(d, d.train, d.train_split, None, cfg.base_dir, "train", cfg)
    rest = torch.ones(len(full), dtype=torch.bool)
    rest[full.balanced_indices(d.train_per_class, d.subset_seed)] = False
    pool = full.subset(rest.nonzero().flatten())
    val = None
    if d.extra_val_per_class:
        val, pool = pool.split_off(d.extra_val_per_class, d.subset_seed + 1)
    if d.extra_unlabeled_per_class:
        n = d.extra_unlabeled_per_class
        unl = pool.subset(pool.balanced_indices(n, d.subset_seed + 2))
        hidden = torch.full_like(unl.labels, UNLABELED)
        parts = (torch.cat([train.images, unl.images]), torch.cat([train.labels, hidden]), list(train.classes),
                 f"{train.source} + {n} unlabelled per class")
        if isinstance(train, RoutedImages) and isinstance(unl, RoutedImages):
            train = RoutedImages(*parts, torch.cat([train.routes, unl.routes]))
        else:
            train = ImageArrays(*parts)
    return train, val


def add_noise_images(train: ImageArrays, n: int, seed: int) -> ImageArrays:
    """``train`` with ``n`` Gaussian-noise images appended (pixels N(127.5, 64^2) clipped to 0..255, the training
    images' shape) under labels drawn uniformly from its classes: the outliers of TGeo-KD's probe. They come last,
    so a run can tell them apart by index (``len(train) - n`` onwards)."""
    import torch

    if isinstance(train, RoutedImages):
        raise ValueError("noise images have no route for a routed mixture's teachers")
    g = torch.Generator().manual_seed(seed)
    noise = (torch.randn(n, *train.images.shape[1:], generator=g) * 64 + 127.5).round().clamp(0, 255)
    labels = torch.randint(0, len(train.classes), (n,), generator=g)
    return ImageArrays(torch.cat([train.images, noise.to(torch.uint8)]), torch.cat([train.labels, labels]),
                       list(train.classes), f"{train.source} + {n} Gaussian-noise images (random labels)")


def build_image_task(d: ImageData) -> ImageClassification:
    if d.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif d.normalize == "cifar10":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = d.normalize.mean, d.normalize.std
    augment = RandomCropFlip(padding=d.augment.crop_padding, flip=d.augment.flip) if d.augment else None
    return ImageClassification(mean, std, augment, channels_last=d.channels_last)
