"""The text-classification family's models: sentence classifiers called as ``model(input_ids, attention_mask)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.models import TEXT_MODELS, build_model
from distill.models.text_students import VOCAB_MODELS
from distill.tasks.common import call_builder, check_num_classes, load_model_weights, validate_model_options

#: what the family passes to every builder itself
SUPPLIED = ("num_classes",)


def text_builder(arch: str) -> Any:
    """The function or class whose keyword arguments ``options`` are (``bilstm``/``textcnn`` forward theirs to the
    classes)."""
    from distill.models.text_students import BiLSTMClassifier, TextCNN

    return {"bilstm": BiLSTMClassifier, "textcnn": TextCNN}.get(arch) or TEXT_MODELS[arch]


def build_text_model(model_cfg: Any, num_outputs: int, vocab_size: int, base_dir: str | None, key: str) -> nn.Module:
    """Embedding-from-scratch models get the tokenizer's vocabulary size unless ``options`` set one."""
    if model_cfg.arch is None or model_cfg.arch not in TEXT_MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task text_classification; allowed: "
                          f"{', '.join(sorted(TEXT_MODELS))}")
    if model_cfg.path is not None:
        raise ConfigError(f"{key}.path: not read by task text_classification (give 'arch' and 'weights')")
    options = validate_model_options(text_builder(model_cfg.arch), model_cfg.options, f"{key}.options",
                                     model_cfg.arch, SUPPLIED)
    if model_cfg.arch in VOCAB_MODELS:
        options.setdefault("vocab_size", vocab_size)
        if options["vocab_size"] < vocab_size:
            raise ConfigError(f"{key}.options.vocab_size: {options['vocab_size']}, but the tokenizer has {vocab_size} "
                              "ids; drop the option (it follows the tokenizer)")
    num_outputs = check_num_classes(model_cfg, num_outputs, key, "outputs" if key == "student" else "classes")
    model = call_builder(build_model, key, model_cfg.arch, num_classes=num_outputs, **options)
    return load_model_weights(model, model_cfg, base_dir, key)
