"""The models of ``task: paired_views``: the CIFAR/ImageNet-style classifiers of ``task: image_classification``
(:data:`distill.models.MODELS`); the teacher is wrapped in :class:`~distill.tasks.paired_views.task.TeacherView` so
that it reads the other view."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.tasks.image.models import build_image_model


def build_paired_model(model_cfg: Any, num_outputs: int | None, base_dir: str | None, key: str, loaded: Any
                       ) -> nn.Module:
    """A classifier with its weights, built as ``task: image_classification`` builds it."""
    return build_image_model(model_cfg, num_outputs, base_dir, key, loaded)
