"""The ``data:`` and ``student:`` sections of ``task: paired_views``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import ModelConfig, Strict
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


class PairedViewAdapterConfig(Strict):
    """``student.adapter``: a residual convolutional adapter g inserted after the student's stage ``at`` (a tap of
    its architecture, e.g. ``f2``), :class:`distill.models.paired_view_adapter.PairedViewAdapted`. g has ``layers``
    convolutions of ``kernel`` x ``kernel`` through ``hidden`` channels (default: the stage's own ``channels``, read
    from its last convolution or BatchNorm when not given), the last one zero-initialised (the adapted model starts
    as the model itself). ``train: adapter``: the model (the frozen exo model, from the teacher's weights) is frozen
    and only g trains (the paper's feature-level KD, with ``paired_view_kd`` on the adapted tap); ``train: model``:
    g is frozen, loaded from ``weights`` (a finished adapter run's ``student.safetensors`` or a file of the adapter
    alone), and the model trains (the paper's combined variant)."""

    at: str = Field("f2", min_length=1, max_length=200)
    hidden: int | None = Field(None, gt=0, le=8192)
    channels: int | None = Field(None, gt=0, le=8192)
    kernel: int = Field(3, ge=1, le=15)
    layers: int = Field(2, ge=1, le=16)
    train: Literal["adapter", "model"] = "adapter"
    weights: str | None = Field(None, min_length=1)


class PairedViewStudent(ModelConfig):
    """The student (the keys of every model section) and ``adapter`` (:class:`PairedViewAdapterConfig`)."""

    adapter: PairedViewAdapterConfig | None = None
