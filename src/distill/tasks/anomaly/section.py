"""The ``data:`` section of ``task: anomaly_detection``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import Strict
from distill.train.config import Flag

Texture = Literal["brick", "grass", "gravel"]
Defect = Literal["ellipse", "scratch", "blob", "blur", "hole"]


class AnomalyData(Strict):
    """Crops of one real texture photograph (scikit-image's ``brick``, ``grass`` or ``gravel``, 512 x 512 gray), or
    (``source: folders``) your images in the MVTec AD layout.

    Training: ``train_crops`` normal crops of ``crop`` px from rows ``[0, split_row)`` (drawn with
    ``subset_seed``), randomly flipped (``flip``) and, with ``train_blur``, blurred by a 3-tap Gaussian of random
    sigma in [0.1, 2] (DBFAD's training blur). Evaluation: ``eval_normal`` normal crops and ``eval_defect`` crops
    with a **synthetic** defect, all from rows ``[split_row, 512)``, made by fixed seeded transforms
    (``defects``, in turn) that give an exact pixel mask; ``eval_seed`` fixes them.
    Gray is copied to 3 channels and normalised with the ImageNet mean and std (the CIFAR ResNets' inputs).

    ``source: folders``: ``root`` is one category folder as MVTec AD lays it out: ``train/good/`` (normal images
    only), ``test/good/`` and ``test/<defect>/`` (evaluation), ``ground_truth/<defect>/<stem>_mask.png`` (or
    ``<stem>.png``; non-zero = defect pixel) for every defective test image. Images (gray or colour, any sizes)
    are resized to ``image_size`` (a multiple of 16; masks by nearest neighbour) and become RGB; ``flip`` and
    ``train_blur`` apply; the texture keys are not read."""

    source: Literal["textures", "folders"] = "textures"
    root: str | None = None
    image_size: int = Field(64, ge=16, le=512, multiple_of=16)

    texture: Texture = "brick"
    crop: int = Field(64, ge=16, le=192)
    split_row: int = Field(320, ge=64, le=448)
    train_crops: int = Field(1000, gt=0)
    eval_normal: int = Field(200, ge=0)
    eval_defect: int = Field(200, ge=0)
    defects: list[Defect] = ["ellipse", "scratch", "blob", "blur", "hole"]
    subset_seed: int = 0
    eval_seed: int = 1234
    flip: Flag = True
    train_blur: Flag = False
