"""Deprecated import path, kept for one release: use distill.tasks.text_classification.task."""

from distill.tasks.text_classification.task import (  # noqa: F401
    TextClassification,
)
