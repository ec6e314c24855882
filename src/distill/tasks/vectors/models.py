"""The vector family's model: a multi-layer perceptron."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, validate_call
from torch import nn

from distill.config import ConfigError
from distill.tasks.common import load_model_weights


@validate_call
def mlp(in_features: int, num_classes: int, hidden: Annotated[int, Field(gt=0)] = 128,
        num_layers: Annotated[int, Field(gt=0)] = 2, dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0) -> nn.Module:
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
    try:
        model = VECTOR_MODELS[model_cfg.arch](in_features, model_cfg.num_classes or num_classes, **model_cfg.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}.options: {str(e).splitlines()[0]}") from None
    return load_model_weights(model, model_cfg, base_dir, key)
