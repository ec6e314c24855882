"""The ``data:`` section of ``task: text_classification``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distill.config import Strict, given_keys
from distill.data.labels import IntegerLabels
from distill.data.text_augment import AugmentConfig


class SurfaceTransform(Strict):
    """A fixed surface rewrite of the texts (:func:`distill.streams.transforms.text_transform`), e.g. to score a model
    on a shifted domain: ``char_noise`` (one seeded character edit in a ``rate`` share of the words of at least
    ``min_length`` characters; the same word always rewritten the same way), ``upper_swap`` or ``identity``;
    applied to the splits named in ``splits``."""

    name: Literal["identity", "upper_swap", "char_noise"]
    rate: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = 0
    min_length: int = Field(4, ge=2)
    splits: list[Literal["train", "eval"]] = ["train", "eval"]

    @model_validator(mode="after")
    def _only_char_noise_reads_its_settings(self) -> SurfaceTransform:
        unread = sorted({"rate", "seed", "min_length"} & given_keys(self)) if self.name != "char_noise" else []
        if unread:
            raise ValueError(f"{unread[0]}: only read with name: char_noise (name: {self.name})")
        return self

    def build(self) -> Any:
        from distill.streams.transforms import text_transform

        if self.name == "char_noise":
            return text_transform(self.name, rate=self.rate, seed=self.seed, min_length=self.min_length)
        return text_transform(self.name)


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
    first column named like text/sentence and label/labels). ``surface_transform`` rewrites the texts of the named
    splits with a fixed text transform (:class:`SurfaceTransform`), before any augmentation and tokenisation.
    ``integer_labels``: integer labels that are not exactly 0..K-1 in the training file (e.g. 1..K) are refused
    (``strict``), taken as class names (``names``: 1..K -> 0..K-1) or kept as indices with empty classes
    (``indices``); :mod:`distill.data.labels`."""

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
    surface_transform: SurfaceTransform | None = None
    integer_labels: IntegerLabels = "strict"
