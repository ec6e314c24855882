"""The ``data:`` section of ``task: embedding`` and the student of the sentence-embedding families."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import Strict


class EmbeddingData(Strict):
    """Unlabelled texts, one per line: ``train`` (the texts whose teacher embeddings the student regresses) and
    ``eval`` (held-out texts: the metric is the mean cosine of student and teacher embeddings on them).
    ``format``: ``lines`` (one text a line) or, read with Hugging Face ``datasets`` (docs/data.md), ``csv``,
    ``jsonl``, ``parquet`` or ``arrow`` with the texts in ``text_column``."""

    train: str
    eval: str | None = None
    max_length: int = Field(128, gt=0)
    format: Literal["lines", "csv", "jsonl", "parquet", "arrow"] = "lines"
    text_column: str = "text"
