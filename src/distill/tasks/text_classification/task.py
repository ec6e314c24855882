"""Sentence classification over token ids: batches of padded ids with attention masks, accuracy metrics."""

from __future__ import annotations

import torch
from torch import nn

from distill.core.batch import Batch
from distill.data.text import TokenizedText
from distill.tasks.metrics import ClassificationMetrics, classification_metric_names


class TextClassification:
    """Classify tokenised sentences (a :class:`~distill.data.text.TokenizedText`).

    A batch's inputs are ``{"input_ids": (B, L), "attention_mask": (B, L)}`` with ``L`` the longest sentence of
    the batch (padding beyond it is cut off); models are called as ``model(input_ids, attention_mask)`` and
    return (B, K) logits. There is no augmentation, so a teacher's outputs on the training set can be computed
    once (see :class:`~distill.core.precomputed.PrecomputedTeacher`).
    """

    primary_metric = "accuracy"
    higher_is_better = True

    def num_examples(self, data: TokenizedText) -> int:
        return len(data)

    def fetch(self, data: TokenizedText, indices: torch.Tensor) -> Batch:
        lengths = data.lengths[indices]
        width = max(int(lengths.max()), 1) if len(indices) else 1
        ids = data.input_ids[indices, :width]
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return Batch(inputs={"input_ids": ids, "attention_mask": mask}, labels=data.labels[indices],
                     indices=indices)

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        return batch

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs["input_ids"], batch.inputs["attention_mask"])

    def new_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics()

    def metric_names(self, num_outputs: int | None) -> tuple[str, ...]:
        """The keys :meth:`new_metrics` reports for a model with ``num_outputs`` logits (``top5`` only above 5)."""
        return classification_metric_names(num_outputs)
