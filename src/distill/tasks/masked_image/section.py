"""The ``data:`` section of ``task: masked_image_pretraining``."""

from __future__ import annotations

from pydantic import Field

from distill.tasks.image.section import ImageData


class MaskedImageData(ImageData):
    """The images of ``task: image_classification`` (same files, subsets, normalisation and crop + flip; the labels
    are never read by the losses), plus the masking: ``mask_ratio`` of the ``patch_size`` x ``patch_size`` patches
    are hidden from the encoder (MAE keeps floor(L (1 - ratio)) patches, drawn per image by argsort of uniform
    noise). Training masks come from the trainer's generator (a resumed run replays them); evaluation masks from
    ``eval_mask_seed`` and the image's index (the same for every run)."""

    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    patch_size: int = Field(4, gt=0)
    eval_mask_seed: int = 1234
