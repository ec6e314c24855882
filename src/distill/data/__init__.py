"""Datasets and batch augmentation: image loaders for the official formats, replayable augmentation."""

from distill.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    RandomCropFlip,
)
from distill.data.images import (
    IMAGE_EXTENSIONS,
    ImageArrays,
    UnsafePickleError,
    load_cifar_pickle,
    load_image_folder,
    load_image_tar,
    load_images,
    load_npz,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageArrays",
    "Normalize",
    "RandomCropFlip",
    "UnsafePickleError",
    "load_cifar_pickle",
    "load_image_folder",
    "load_image_tar",
    "load_images",
    "load_npz",
]
