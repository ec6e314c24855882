"""``task: image_classification``: images in memory, random crop and flip with explicit randomness, top-k accuracy."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.tasks.image.data import build_image_task, load_image_data
from distill.tasks.image.models import build_image_model
from distill.tasks.image.section import ImageData


@register_family
class ImageFamily(Family):
    name = "image_classification"
    summary = "images -> class logits (CIFAR folders, tar archives, npz, CIFAR python batches)"
    data_section = ImageData

    def model_archs(self) -> list[str]:
        from distill.models import MODELS

        return list(MODELS)

    def augments(self, cfg: Any) -> bool:
        return cfg.data is not None and cfg.data.augment is not None

    def load(self, cfg: Any) -> Loaded:
        train, evald, val = load_image_data(cfg)
        return Loaded(build_image_task(cfg.data), train, evald, val, num_outputs=train.num_classes)

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return build_image_model(model_cfg, loaded.num_outputs, cfg.base_dir, key)
