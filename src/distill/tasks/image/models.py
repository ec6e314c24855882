"""The image family's models: the CIFAR architectures of :mod:`distill.models` by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.models import MODELS, build_model
from distill.tasks.common import call_builder, check_num_classes, load_model_weights, validate_model_options

#: what the family passes to every builder itself
SUPPLIED = ("num_classes",)


def build_image_model(model_cfg: Any, num_classes: int, base_dir: str | None, key: str) -> nn.Module:
    if model_cfg.arch is None:
        raise ConfigError(f"{key}.arch: required key is missing; allowed: {', '.join(sorted(MODELS))}")
    if model_cfg.arch not in MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task image_classification; "
                          f"allowed: {', '.join(sorted(MODELS))}")
    if model_cfg.path is not None:
        raise ConfigError(f"{key}.path: not read by task image_classification (give 'weights')")
    options = validate_model_options(MODELS[model_cfg.arch], model_cfg.options, f"{key}.options", model_cfg.arch,
                                     SUPPLIED)
    num_classes = check_num_classes(model_cfg, num_classes, key)
    model = call_builder(build_model, key, model_cfg.arch, num_classes=num_classes, **options)
    return load_model_weights(model, model_cfg, base_dir, key)
