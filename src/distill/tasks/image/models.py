"""The image family's models: the CIFAR architectures of :mod:`distill.models` by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.models import MODELS, build_model
from distill.tasks.common import load_model_weights


def build_image_model(model_cfg: Any, num_classes: int, base_dir: str | None, key: str) -> nn.Module:
    if model_cfg.arch is None:
        raise ConfigError(f"{key}.arch: required key is missing; allowed: {', '.join(sorted(MODELS))}")
    if model_cfg.arch not in MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task image_classification; "
                          f"allowed: {', '.join(sorted(MODELS))}")
    if model_cfg.path is not None:
        raise ConfigError(f"{key}.path: not read by task image_classification (give 'weights')")
    model = build_model(model_cfg.arch, num_classes=model_cfg.num_classes or num_classes, **model_cfg.options)
    return load_model_weights(model, model_cfg, base_dir, key)
