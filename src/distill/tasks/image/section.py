"""The ``data:`` section of ``task: image_classification``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import Strict
from distill.data.labels import IntegerLabels
from distill.train.config import Flag


class NormalizeConfig(Strict):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class AugmentConfig(Strict):
    """Random crop with zero padding and horizontal flip (:class:`distill.data.augment.RandomCropFlip`)."""

    crop_padding: int = Field(4, ge=0)
    flip: Flag = True


class ImageData(Strict):
    """Images from CIFAR python batches, image folders, tar archives or npz files; ``train_split`` /
    ``eval_split`` pick the split inside a file that holds several (null: the whole file or folder).
    ``train_per_class`` / ``eval_per_class`` take a class-balanced subset (drawn with ``subset_seed``);
    ``val_per_class`` holds a validation split out of training;
    ``labeled_per_class`` keeps that many labels per class and hides the rest (semi-supervised methods);
    ``image_size`` resizes; ``cache_dir`` keeps decoded images as npz (and the Arrow files of ``datasets``).

    ``format``: ``auto`` tells the formats above apart by the path; the others read ``train`` / ``eval`` with
    Hugging Face ``datasets`` (docs/data.md): ``imagefolder`` (class-named subfolders, split folders picked by
    ``train_split`` / ``eval_split``), ``parquet``, ``jsonl``, ``csv`` (a file or a folder of shards) or ``arrow``
    (a ``save_to_disk`` folder), with the images in ``image_column`` (``Image`` values, paths or bytes) and the
    labels in ``label_column``. ``streaming`` decodes each batch's images from there instead of holding every image
    in memory.
    ``integer_labels``: integer labels that are not exactly 0..K-1 in the training file (e.g. 1..K) are refused
    (``strict``), taken as class names (``names``: 1..K -> 0..K-1) or kept as indices with empty classes
    (``indices``); :mod:`distill.data.labels`."""

    train: str
    eval: str | None = None
    train_split: str | None = "train"
    eval_split: str | None = "test"
    train_per_class: int | None = Field(None, gt=0)
    eval_per_class: int | None = Field(None, gt=0)
    val_per_class: int | None = Field(None, gt=0)
    labeled_per_class: int | None = Field(None, gt=0)
    #: validation images per class drawn from the rest of ``train_split`` (outside the ``train_per_class`` subset)
    extra_val_per_class: int | None = Field(None, gt=0)
    #: images per class from the rest of ``train_split`` (outside the subset and the extra validation images)
    #: appended to the training set with their labels hidden (semi-supervised methods)
    extra_unlabeled_per_class: int | None = Field(None, gt=0)
    #: Gaussian-noise images with uniformly random labels appended to the training set (TGeo-KD's outlier probe;
    #: pixels N(127.5, 64^2) clipped to 0..255, the training images' size, seed ``subset_seed + 3``)
    noise_images: int | None = Field(None, gt=0)
    subset_seed: int = 0
    image_size: int | None = Field(None, gt=0)
    normalize: Literal["imagenet", "cifar10"] | NormalizeConfig = "imagenet"
    augment: AugmentConfig | None = AugmentConfig()
    cache_dir: str | None = None
    channels_last: Flag = True
    format: Literal["auto", "imagefolder", "parquet", "jsonl", "csv", "arrow"] = "auto"
    image_column: str = "image"
    label_column: str = "label"
    streaming: Flag = False
    integer_labels: IntegerLabels = "strict"
