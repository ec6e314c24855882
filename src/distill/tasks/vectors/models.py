"""The vector family's model: a multi-layer perceptron."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, validate_call
from torch import nn

from distill.config import ConfigError
from distill.models.bounds import Layers, Rate, Width
from distill.tasks.common import call_builder, check_num_classes, load_model_weights, validate_model_options

#: what the family passes to the builder itself
SUPPLIED = ("in_features", "num_classes")


@validate_call
def mlp(in_features: Annotated[int, Field(gt=0)], num_classes: Annotated[int, Field(gt=0)], hidden: Width = 128,
        num_layers: Layers = 2, dropout: Rate = 0.0) -> nn.Module:
    """``num_layers`` linear layers (ReLU and dropout between them) from ``in_features`` to ``num_classes``."""
    sizes = [in_features] + [hidden] * (num_layers - 1) + [num_classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < num_layers - 1:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


VECTOR_MODELS = {"mlp": mlp}


def build_vector_model(model_cfg: Any, in_features: int, num_classes: int, base_dir: str | None,
                       key: str) -> nn.Module:
    if model_cfg.arch not in VECTOR_MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task vector_classification; allowed: "
                          f"{', '.join(VECTOR_MODELS)}")
    builder = VECTOR_MODELS[model_cfg.arch]
    options = validate_model_options(builder, model_cfg.options, f"{key}.options", model_cfg.arch, SUPPLIED)
    num_classes = check_num_classes(model_cfg, num_classes, key)
    model = call_builder(builder, key, in_features, num_classes, **options)
    return load_model_weights(model, model_cfg, base_dir, key)
