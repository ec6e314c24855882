"""The ``data:`` section of ``task: embedding`` and the student of the sentence-embedding families."""

from __future__ import annotations

from pydantic import Field

from distill.config import Strict


class EmbeddingData(Strict):
    """Unlabelled texts, one per line: ``train`` (the texts whose teacher embeddings the student regresses) and
    ``eval`` (held-out texts: the metric is the mean cosine of student and teacher embeddings on them)."""

    train: str
    eval: str | None = None
    max_length: int = Field(128, gt=0)
