"""Loading texts for the sentence-embedding families."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.tasks.common import existing_file, existing_path


def read_text_lines(path: Any, key: str = "data.train") -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{key}: {path} is not UTF-8 text (byte {e.start}); one text per line expected") from None
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"{key}: {path} holds no texts (one text per line expected)")
    return texts


def table_texts(path: Path, fmt: str, column: str, key: str) -> list[str]:
    """The non-empty texts (stripped) of column ``column`` of a ``datasets`` table, as :func:`read_text_lines`
    reads a file's lines."""
    from distill.data.tables import check_columns, read_table, split_for, texts_of

    table = read_table(path, fmt, key, split=split_for(key))
    check_columns(table, {"data.text_column": column}, path)
    texts = [t.strip() for t in texts_of(table, column, key, path) if t.strip()]
    if not texts:
        raise ConfigError(f"{key}: {path} holds no texts in column {column!r}")
    return texts


def load_texts(cfg: Any, key: str) -> list[str]:
    d = cfg.data
    if d.format != "lines":
        return table_texts(existing_path(getattr(d, key), cfg.base_dir, f"data.{key}"), d.format, d.text_column,
                           f"data.{key}")
    return read_text_lines(existing_file(getattr(d, key), cfg.base_dir, f"data.{key}"), f"data.{key}")
