"""Task families, one folder per ``task:`` value, each with the same parts (see :mod:`distill.core.family`):
``section.py`` (its ``data:`` section), ``data.py`` (loading), ``task.py`` (the adapter: how a model is called on a
batch, the supervised loss, the metrics), ``models.py`` (its model builders) and ``build.py`` (the registered
:class:`~distill.core.family.Family`)."""

from distill.tasks.base import Task
from distill.tasks.image.task import ImageClassification
from distill.tasks.vectors.task import VectorClassification, vector_dataset

__all__ = ["Task", "ImageClassification", "VectorClassification", "vector_dataset"]
