"""Task adapters: how a model is called on a batch, how a batch is prepared, and what is measured."""

from distill.tasks.base import Task
from distill.tasks.classification import ImageClassification
from distill.tasks.vectors import VectorClassification, vector_dataset

__all__ = ["Task", "ImageClassification", "VectorClassification", "vector_dataset"]
