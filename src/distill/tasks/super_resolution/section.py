"""The ``data:`` and ``student:`` sections of ``task: super_resolution``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import ModelConfig, Strict
from distill.train.config import Flag


class TextureCrops(Strict):
    """High-resolution crops (``hr_size`` square) of scikit-image texture photographs: training crops from rows
    [0, ``split_row``), test crops from rows [``split_row``, H); ``train_size`` / ``eval_size`` crops drawn with
    ``train_seed`` / ``eval_seed``. Grayscale photographs are copied to 3 channels."""

    textures: list[str] = Field(default_factory=lambda: ["brick", "grass", "gravel"], min_length=1)
    hr_size: int = Field(64, ge=8, le=512)
    split_row: int = Field(320, gt=0)
    train_size: int = Field(3000, gt=0)
    eval_size: int = Field(600, gt=0)
    train_seed: int = 0
    eval_seed: int = 12345


class SuperResolutionData(Strict):
    """High-resolution images and their low-resolution versions, made by antialiased bicubic downsampling by
    ``scale`` (``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``, rounded to 8 bits).

    ``source``: ``images`` reads the high-resolution images from ``train`` / ``eval`` as ``image_classification``
    does (CIFAR-10 tar archive or python folder, image folders, npz; ``train_split`` / ``eval_split`` pick the split,
    the labels are ignored); ``folders``: ``train`` / ``eval`` are folders of images (an ``hr/`` subfolder beside an
    ``lr/`` one of the same file names gives the pairs as they are, otherwise the low-resolution images are made);
    ``textures``: crops of scikit-image's texture photographs (``textures``). ``patch_size`` (``folders`` only): the
    high-resolution images (and their ``lr/`` partners) are cut into non-overlapping square tiles of that size, so
    a folder may hold images of any sizes (evaluation then scores the tiles). ``train_size`` / ``eval_size`` keep
    the first images (tiles) after a shuffle with ``subset_seed``. ``border``: pixels cropped from each side before PSNR
    and SSIM (default: ``scale``).

    ``streaming`` (``folders`` only; the name and idea of ``image_classification``'s): keep the file list and the
    sizes read from the headers, and decode each image when its batch is fetched. Training then cuts one random
    ``patch_size`` HR patch (on the ``scale`` grid, with its aligned LR partner) from each image per epoch, the
    corner drawn before the fetch from the run's seeded generator and the patch cut where the image is decoded (in
    the loader worker: only patches cross to the training process), instead of tiling; evaluation scores whole
    images (one size, or ``train.eval_batch_size: 1``) or, with ``patch_size``, the same tiles as in memory.

    ``augment``: each training pair gets a random horizontal flip, vertical flip and 90-degree rotation (one of
    the 8 orientations, uniformly; :class:`distill.data.augment.RandomFlipRot`), the same for the low-resolution
    input and its high-resolution target, as EDSR, BasicSR and SPAN train. Drawn from the trainer's generator (a
    function of the seed, epoch and step: a resumed run is bit-identical), after a streamed patch is cut; the
    parameters are kept in ``meta["augment"]``. Rotations need square training images (patches, texture crops,
    CIFAR); on other sizes only the flips are drawn. With ``teacher.cache`` the cache stores the teacher's outputs
    on ``teacher.cache.views`` augmented views per example (drawn from ``teacher.cache.seed``) and training shows
    view (offset + epoch) mod views: the teacher's real output on the very input the student sees, never a
    flipped copy of its output on another view. Off by default (the recipes' results are unchanged)."""

    source: Literal["images", "folders", "textures"] = "images"
    train: str | None = None
    eval: str | None = None
    train_split: str | None = "train"
    eval_split: str | None = "test"
    scale: int = Field(2, ge=2, le=8)
    patch_size: int | None = Field(None, ge=4, le=4096)
    train_size: int | None = Field(None, gt=0)
    eval_size: int | None = Field(None, gt=0)
    subset_seed: int = 0
    textures: TextureCrops = TextureCrops()
    border: int | None = Field(None, ge=0)
    cache_dir: str | None = None
    streaming: Flag = False
    augment: Flag = False


class ConvLoraTarget(Strict):
    """One convolution wrapped in ConvLoRA: ``rank`` r and ``alpha`` (the update is scaled by alpha / r)."""

    rank: int = Field(gt=0, le=1024)
    alpha: float = Field(gt=0)


class SuperResolutionStudent(ModelConfig):
    """The student (the keys of every model section) and ``conv_lora``: ``{module name: {rank, alpha}}``, the
    convolutions wrapped in :class:`distill.models.conv_lora.ConvLoRA` after ``weights`` are loaded; everything
    else is then frozen (``conv_lora_train_bias``: the wrapped convolutions' biases stay trainable). The run folder
    gets ``student_merged.safetensors``: the base architecture with the updates merged in."""

    conv_lora: dict[str, ConvLoraTarget] | None = None
    conv_lora_train_bias: Flag = False
