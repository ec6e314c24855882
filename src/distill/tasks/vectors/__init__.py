"""Feature-vector classification (task: vector_classification):
a family folder. The package re-exports the names of its task module
(their import path before families were folders, kept for one release)."""

from distill.tasks.vectors.task import (  # noqa: F401
    VectorClassification,
    vector_dataset,
)
