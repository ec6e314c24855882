"""Loading texts for the sentence-embedding families."""

from __future__ import annotations

from typing import Any

from distill.config import ConfigError
from distill.tasks.common import existing_file


def read_text_lines(path: Any, key: str = "data.train") -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{key}: {path} is not UTF-8 text (byte {e.start}); one text per line expected") from None
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"{key}: {path} holds no texts (one text per line expected)")
    return texts


def load_texts(cfg: Any, key: str) -> list[str]:
    return read_text_lines(existing_file(getattr(cfg.data, key), cfg.base_dir, f"data.{key}"), f"data.{key}")
