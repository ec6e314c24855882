"""Loading the text-classification family's data: labelled sentences, an optional transfer set, aspect answers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from distill.config import ConfigError
from distill.data.text import (
    TextDataError,
    TextExamples,
    TokenizedText,
    load_text_classification,
    load_tokenizer,
    tokenize,
)
from distill.data.text_augment import augment_examples
from distill.tasks.common import existing_file


def read_tokenizer(cfg: Any) -> Any:
    try:
        return load_tokenizer(cfg.data.tokenizer)
    except (FileNotFoundError, ImportError, OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"data.tokenizer: {str(e).splitlines()[0]}") from None


def load_text_split(cfg: Any, key: str, tokenizer: Any, classes: list[str] | None) -> TokenizedText:
    d = cfg.data
    path = existing_file(getattr(d, key), cfg.base_dir, f"data.{key}")
    try:
        examples = load_text_classification(path, d.format, classes)
    except TextDataError as e:
        raise ConfigError(f"data.{key}: {e}") from None
    if key == "train" and d.augment is not None:
        settings = d.augment
        if settings.mask_token is None:
            settings = replace(settings, mask_token=getattr(tokenizer, "mask_token", None) or "[MASK]")
        augmented, source = augment_examples(examples, settings)
        if d.augment_labels == "source":  # every copy carries the label of the sentence it was made from
            augmented = TextExamples(augmented.texts, [examples.labels[i] for i in source], augmented.classes,
                                     augmented.source)
        examples = augmented
    return tokenize(examples, tokenizer, d.max_length)


def load_aspects(cfg: Any, train: TokenizedText) -> Any:
    """The aspect answers of ``data.aspects``, checked against the training texts they were scored on."""
    from distill.methods.logits.makd import AspectTargets, texts_fingerprint

    path = existing_file(cfg.data.aspects, cfg.base_dir, "data.aspects")
    try:
        aspects = AspectTargets.load(path, expect_fingerprint=texts_fingerprint(train.texts))
    except ValueError as e:
        raise ConfigError(f"data.aspects: {e}") from None
    if len(aspects.probs) != len(train):
        raise ConfigError(f"data.aspects: {path} holds {len(aspects.probs)} rows, the training set {len(train)}")
    return aspects
