"""Loading the text-classification family's data: labelled sentences, an optional transfer set, aspect answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.data.text import (
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    TextDataError,
    TextExamples,
    TokenizedText,
    load_text_classification,
    load_tokenizer,
    tokenize,
)
from distill.data.text_augment import augment_examples
from distill.tasks.common import existing_file, existing_path


def read_tokenizer(cfg: Any) -> Any:
    try:
        return load_tokenizer(cfg.data.tokenizer)
    except (FileNotFoundError, ImportError, OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"data.tokenizer: {str(e).splitlines()[0]}") from None


def uses_table(d: Any) -> bool:
    """Whether ``data.format`` reads the files with ``datasets`` (CSV only when a column is named; otherwise the
    CSV reader of :mod:`distill.data.text` finds the columns itself)."""
    return d.format in ("jsonl", "parquet", "arrow") or (d.format == "csv" and bool(d.text_column or d.label_column))


def read_text_table(d: Any, path: Path, key: str, classes: list[str] | None) -> TextExamples:
    """The labelled texts of a ``datasets`` table (columns ``data.text_column`` / ``data.label_column``)."""
    from distill.data.tables import labels_of, pick_column, read_table, split_for, texts_of

    table = read_table(path, d.format, f"data.{key}", split=split_for(key))
    text = pick_column(table, d.text_column, TEXT_COLUMNS, "data.text_column", path)
    label = pick_column(table, d.label_column, LABEL_COLUMNS, "data.label_column", path)
    labels, names = labels_of(table, label, f"data.{key}", path, classes)
    return TextExamples(texts_of(table, text, f"data.{key}", path), labels.tolist(), names, f"table {path}")


def load_text_split(cfg: Any, key: str, tokenizer: Any, classes: list[str] | None) -> TokenizedText:
    d = cfg.data
    if uses_table(d):
        examples = read_text_table(d, existing_path(getattr(d, key), cfg.base_dir, f"data.{key}"), key, classes)
    else:
        path = existing_file(getattr(d, key), cfg.base_dir, f"data.{key}")
        try:
            examples = load_text_classification(path, d.format, classes)
        except TextDataError as e:
            raise ConfigError(f"data.{key}: {e}") from None
    if d.surface_transform is not None and key in d.surface_transform.splits:
        rewrite = d.surface_transform.build()
        examples = TextExamples([rewrite(t) for t in examples.texts], examples.labels, examples.classes,
                                examples.source)
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
