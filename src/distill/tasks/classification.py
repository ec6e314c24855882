"""Deprecated import path, kept for one release: use distill.tasks.image.task."""

from distill.tasks.image.task import (  # noqa: F401
    ClassificationMetrics,
    ImageClassification,
)
