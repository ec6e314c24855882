"""Paired views: the student sees one view of an item, the frozen teacher the other, synchronised.

Batches: ``inputs`` the student's (ego) view, normalised; ``meta["teacher_inputs"]`` the teacher's (exo) view of the
same images (the crop + flip of training is drawn once and applied before the ego transform, so both views show the
same instant). In training ``labels`` is None unless the data section says ``labels_in_training`` (an oracle): no
label reaches a distillation loss. A model wrapped as :class:`TeacherView` is called on the teacher's view; any other
model on ``inputs``. The metric is top-1 of the student on the ego view of the evaluation images.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.core.batch import Batch
from distill.data.augment import RandomCropFlip
from distill.tasks.image.task import ImageClassification
from distill.tasks.paired_views.data import ego_view


class TeacherView(nn.Module):
    """A model that reads the teacher's view of a paired batch (its taps keep their names)."""

    view = "teacher"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        taps = getattr(model, "feature_taps", None) or {}
        self.feature_taps = {k: f"model.{v}" for k, v in taps.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PairedViews(ImageClassification):
    """The task adapter of ``task: paired_views`` (see the module docstring)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], augment: RandomCropFlip | None = None,
                 crop: int = 20, flip: bool = True, rotation: float = 15.0, gamma: float = 0.7,
                 labels_in_training: bool = False):
        super().__init__(mean, std, augment, channels_last=False)
        self.ego = {"crop": crop, "flip": flip, "rotation": rotation, "gamma": gamma}
        self.labels_in_training = labels_in_training

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "ego": repr(self.ego)}

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        images, meta = batch.inputs, dict(batch.meta)
        if train and self.augment is not None:
            if generator is None:
                raise ValueError("training batches need a generator for their augmentation")
            params = self.augment.sample(images.shape[0], generator).to(images.device)
            images = self.augment.apply(images, params)
            meta["augment"] = params
        meta["teacher_inputs"] = self.normalize(images)
        student = self.normalize(ego_view(images, **self.ego))
        labels = batch.labels if (not train or self.labels_in_training) else None
        return Batch(inputs=student, labels=labels, indices=batch.indices, meta=meta)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if getattr(model, "view", None) == "teacher":
            return model(batch.meta["teacher_inputs"])
        return model(batch.inputs)
