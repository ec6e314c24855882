"""Classification of fixed-length feature vectors (tabular data, precomputed embeddings, flattened small images)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from distill.core.batch import Batch
from distill.tasks.metrics import ClassificationMetrics, classification_metric_names


def vector_dataset(features: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
    """Check and pack ``features`` (N, d) and integer ``labels`` (N,) for :class:`VectorClassification`.

    Labels of unlabelled rows are ``distill.data.images.UNLABELED`` (-100), as everywhere in the library."""
    features, labels = torch.as_tensor(features), torch.as_tensor(labels)
    if features.dim() != 2:
        raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-d integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels")
    if not torch.isfinite(features.float()).all():
        raise ValueError("features contain NaN or infinite values")
    return TensorDataset(features.float(), labels.long())


class VectorClassification:
    """Classify rows of a :func:`vector_dataset`: the model gets a float batch (B, d), standardised with ``mean``
    and ``std`` when given (fit them on the training rows with :meth:`fit_standardizer`); no augmentation."""

    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if std is not None and bool((torch.as_tensor(std) <= 0).any()):
            raise ValueError("std must be positive in every column")
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)

    @staticmethod
    def fit_standardizer(data: TensorDataset, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column mean and standard deviation of the features.

        A column whose standard deviation is below ``eps`` (constant in the training rows) gets scale 1, as
        sklearn's ``StandardScaler`` does: dividing by a tiny floor would blow up any eval row that differs."""
        x = data.tensors[0].float()
        std = x.std(0, unbiased=False)
        return x.mean(0), torch.where(std < eps, torch.ones_like(std), std)

    def describe(self) -> dict[str, str]:
        return {"task": type(self).__name__, "standardised": str(self.mean is not None)}

    def num_examples(self, data: TensorDataset) -> int:
        return len(data)

    def fetch(self, data: TensorDataset, indices: torch.Tensor) -> Batch:
        features, labels = data.tensors[:2]
        meta = {"route": data.tensors[2][indices]} if len(data.tensors) > 2 else {}  # a mixture's route column
        return Batch(inputs=features[indices], labels=labels[indices], indices=indices, meta=meta)

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        x = batch.inputs.float()
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return Batch(inputs=x, labels=batch.labels, indices=batch.indices, meta=dict(batch.meta))

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs)

    def new_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics()

    def metric_names(self, num_outputs: int | None) -> tuple[str, ...]:
        """The keys :meth:`new_metrics` reports for a model with ``num_outputs`` logits (``top5`` only above 5)."""
        return classification_metric_names(num_outputs)
