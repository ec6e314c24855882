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


def table_format(d: Any, path: str | Path) -> str | None:
    """The ``datasets`` format a file is read with, or None for the reader of :mod:`distill.data.text` (CSV only
    when a column is named; otherwise that reader finds the columns itself). ``format: auto`` picks by the file
    name: ``.jsonl``/``.json`` and ``.parquet`` are tables, ``.csv`` when a column is named."""
    fmt = d.format
    if fmt == "auto":
        name = str(path).lower()
        fmt = ("jsonl" if name.endswith((".jsonl", ".json")) else "parquet" if name.endswith(".parquet")
               else "csv" if name.endswith(".csv") else fmt)
    if fmt in ("jsonl", "parquet", "arrow") or (fmt == "csv" and bool(d.text_column or d.label_column)):
        return fmt
    return None


def read_text_table(d: Any, path: Path, key: str, classes: list[str] | None,
                    fmt: str | None = None) -> TextExamples:
    """The labelled texts of a ``datasets`` table (columns ``data.text_column`` / ``data.label_column``)."""
    from distill.data.tables import labels_of, pick_column, read_table, split_for, texts_of

    table = read_table(path, fmt or table_format(d, path) or d.format, f"data.{key}", split=split_for(key))
    text = pick_column(table, d.text_column, TEXT_COLUMNS, "data.text_column", path)
    label = pick_column(table, d.label_column, LABEL_COLUMNS, "data.label_column", path)
    labels, names = labels_of(table, label, f"data.{key}", path, classes, d.integer_labels)
    texts = texts_of(table, text, f"data.{key}", path)
    for i, t in enumerate(texts):
        if not t.strip():
            raise ConfigError(f"data.{key}: {path}: column {text!r} row {i} (counting from 0) is an empty text")
    return TextExamples(texts, labels.tolist(), names, f"table {path}")


def _label_column_name(d: Any, path: Path) -> str:
    return f"column {d.label_column!r}" if d.label_column and table_format(d, path) else f"the labels of {path.name}"


def load_text_split(cfg: Any, key: str, tokenizer: Any, classes: list[str] | None) -> TokenizedText:
    d = cfg.data
    fmt = table_format(d, getattr(d, key))
    if fmt is not None:
        path = existing_path(getattr(d, key), cfg.base_dir, f"data.{key}")
        examples = read_text_table(d, path, key, classes, fmt)
    else:
        path = existing_file(getattr(d, key), cfg.base_dir, f"data.{key}")
        named = "data.text_column" if d.text_column else "data.label_column" if d.label_column else None
        if named is not None:  # the SST / TSV reader finds its columns itself: a named column would be ignored
            raise ConfigError(f"{named}: {path.name} is read by distill's SST/TSV reader (data.format: {d.format}), "
                              "which takes the text/sentence and label columns of its header itself; named columns "
                              "are read from tables: data.format: csv, jsonl, parquet or arrow")
        try:
            examples = load_text_classification(path, d.format, classes, integer_labels=d.integer_labels,
                                                key=f"data.{key}")
        except TextDataError as e:
            hint = (" (name other columns with data.text_column and data.label_column, and data.format: csv)"
                    if "needs a header" in str(e) else "")
            raise ConfigError(f"data.{key}: {e}{hint}") from None
    if key == "train" and len(set(examples.labels)) < 2:
        found = examples.classes[examples.labels[0]] if examples.labels else None
        raise ConfigError(f"data.{key}: {path}: {_label_column_name(d, path)} holds one class only ({found!r}); a "
                          "classifier needs at least two")
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
