"""The ``data:`` section of ``task: vector_classification``."""

from __future__ import annotations

from typing import Literal

from distill.config import Strict
from distill.data.labels import IntegerLabels
from distill.train.config import Flag


class VectorData(Strict):
    """Rows of numbers with an integer label: an ``.npz`` file with arrays ``x`` (N, d) and ``y`` (N,), or a CSV
    file with a header whose ``label`` column is the label and every other column a feature. ``standardize``:
    scale every column by the training rows' mean and standard deviation. ``format``: ``auto`` (by the file name)
    or, read with Hugging Face ``datasets`` (docs/data.md), ``csv``, ``jsonl``, ``parquet`` or ``arrow``: the
    ``label`` column and every other column a feature (a number, or a list of numbers spread over several).
    ``integer_labels``: integer labels that are not exactly 0..K-1 in the training file (e.g. 1..K) are refused
    (``strict``), taken as class names (``names``: 1..K -> 0..K-1) or kept as indices with empty classes
    (``indices``); :mod:`distill.data.labels`."""

    train: str
    eval: str | None = None
    label: str = "label"
    standardize: Flag = True
    format: Literal["auto", "csv", "jsonl", "parquet", "arrow"] = "auto"
    integer_labels: IntegerLabels = "strict"
