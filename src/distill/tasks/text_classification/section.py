"""The ``data:`` section of ``task: text_classification``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import Strict
from distill.data.text_augment import AugmentConfig


class TextClassificationData(Strict):
    """Labelled-sentence files (SST ``<label> <sentence>`` lines, ``label<TAB>text`` TSV, or TSV/CSV with a header
    naming text/sentence and label columns), tokenised with a local Hugging Face tokenizer (``minilm``: the one
    packaged with all-MiniLM-L6-v2). ``augment`` adds augmented copies of the training sentences labelled by the
    teacher only (a transfer set, :mod:`distill.data.text_augment`); ``augment_labels: source`` gives every copy its
    source sentence's label instead (augmentation without a teacher: the control of a transfer-set run).
    ``aspects`` is the teacher of method ``makd``: a safetensors file written by
    ``distill.methods.logits.makd.AspectTargets.save`` for the training texts in file order (checked by fingerprint).

    ``format: jsonl | parquet | arrow`` (and ``csv`` when a column is named) read the files with Hugging Face
    ``datasets`` (docs/data.md): the texts in ``text_column`` and the labels in ``label_column`` (by default the
    first column named like text/sentence and label/labels)."""

    train: str
    eval: str | None = None
    format: Literal["auto", "sst", "tsv", "csv", "jsonl", "parquet", "arrow"] = "auto"
    text_column: str | None = None
    label_column: str | None = None
    tokenizer: str = "minilm"
    max_length: int = Field(64, ge=2)
    augment: AugmentConfig | None = None
    augment_labels: Literal["teacher", "source"] = "teacher"
    aspects: str | None = None
