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
    from distill.data.tables import check_columns, column_values, read_table, split_for

    table = read_table(path, fmt, key, split=split_for(key))
    check_columns(table, {"data.text_column": column}, path)
    values = column_values(table, column)
    for i, v in enumerate(values):  # empty cells (null / NaN) are skipped, like empty lines and empty strings
        empty = v is None or (isinstance(v, float) and v != v)
        if not empty and not isinstance(v, str):
            raise ConfigError(f"{key}: {path}: column {column!r} row {i} (counting from 0) is "
                              f"{type(v).__name__}, not text")
    texts = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    if not texts:
        raise ConfigError(f"{key}: {path} holds no texts in column {column!r}")
    return texts


def load_texts(cfg: Any, key: str) -> list[str]:
    d = cfg.data
    if d.format != "lines":
        return table_texts(existing_path(getattr(d, key), cfg.base_dir, f"data.{key}"), d.format, d.text_column,
                           f"data.{key}")
    path = existing_file(getattr(d, key), cfg.base_dir, f"data.{key}")
    table = next((f for f in TABLE_SUFFIXES if path.name.lower().endswith(f)), None)
    if table is not None:
        fmt = TABLE_SUFFIXES[table]
        raise ConfigError(f"data.{key}: {path.name} looks like a {fmt} table, but data.format is 'lines' (one text a "
                          f"line, read as is); set data.format: {fmt} (and data.text_column)")
    return read_text_lines(path, f"data.{key}")


TABLE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
