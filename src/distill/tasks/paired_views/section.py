"""The ``data:`` section of ``task: paired_views``."""

from __future__ import annotations

from pydantic import Field

from distill.config import Strict
from distill.tasks.image.section import ImageData
from distill.train.config import Flag


class EgoViewConfig(Strict):
    """The fixed, deterministic transform that makes the student's ("ego") view of each image from the teacher's
    ("exo") view: a centre crop of ``crop`` x ``crop`` pixels resized back to the image size (bilinear), a horizontal
    flip (``flip``), a rotation by ``rotation`` degrees (bilinear, zero padding) and a gamma ``gamma`` on [0, 1]
    intensities. The two views of an item are synchronised by construction."""

    crop: int = Field(20, gt=0)
    flip: Flag = True
    rotation: float = 15.0
    gamma: float = Field(0.7, gt=0)


class PairedViewData(ImageData):
    """Images as in ``task: image_classification``; each item yields (student view, teacher view) = (ego, exo)
    (``ego``: the transform above, after the shared crop + flip of training). The labels are hidden from the
    training losses unless ``labels_in_training`` (an oracle trained on the student's view); evaluation always
    scores the student on the ego view of the evaluation images."""

    ego: EgoViewConfig = EgoViewConfig()
    labels_in_training: Flag = False
