"""Steps shared by the family builders."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError, resolve_path
from distill.core.safe_pickle import config_key
from distill.models.weights import load_weights_into


def load_model_weights(model: nn.Module, model_cfg: Any, base_dir: str | None, key: str) -> nn.Module:
    """Load ``model_cfg.weights`` (safetensors or a weights-only checkpoint) into ``model``."""
    if not model_cfg.weights:
        return model
    path = resolve_path(model_cfg.weights, base_dir)
    if not path.is_file():
        raise ConfigError(f"{key}.weights: {path} is not a file")
    try:
        with config_key(f"{key}.weights"):
            return load_weights_into(model, path)
    except (ValueError, RuntimeError, OSError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}.weights: {path}: {str(e).splitlines()[0]}") from None


def existing_file(value: str, base_dir: str | None, key: str) -> Any:
    path = resolve_path(value, base_dir)
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a file" if path.exists() else f"{key}: {path} does not exist")
    return path
