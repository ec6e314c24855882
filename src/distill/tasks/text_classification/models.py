"""The text-classification family's models: sentence classifiers called as ``model(input_ids, attention_mask)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.models import TEXT_MODELS, build_model
from distill.models.text_students import VOCAB_MODELS
from distill.tasks.common import load_model_weights


def build_text_model(model_cfg: Any, num_outputs: int, vocab_size: int, base_dir: str | None, key: str) -> nn.Module:
    """Embedding-from-scratch models get the tokenizer's vocabulary size unless ``options`` set one."""
    if model_cfg.arch is None or model_cfg.arch not in TEXT_MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task text_classification; allowed: "
                          f"{', '.join(sorted(TEXT_MODELS))}")
    if model_cfg.path is not None:
        raise ConfigError(f"{key}.path: not read by task text_classification (give 'arch' and 'weights')")
    options = dict(model_cfg.options)
    if model_cfg.arch in VOCAB_MODELS:
        options.setdefault("vocab_size", vocab_size)
    model = build_model(model_cfg.arch, num_classes=model_cfg.num_classes or num_outputs, **options)
    return load_model_weights(model, model_cfg, base_dir, key)
