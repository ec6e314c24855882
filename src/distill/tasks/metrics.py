"""Metrics shared by the classification families (images, sentences, feature vectors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.batch import Batch


class ClassificationMetrics:
    """Running top-1 / top-5 accuracy and mean cross-entropy."""

    def __init__(self) -> None:
        self.n = 0
        self.correct1 = 0
        self.correct5 = 0
        self.loss_sum = 0.0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        labels = batch.labels
        assert labels is not None
        outputs = outputs.float()
        k = min(5, outputs.shape[-1])
        top = outputs.topk(k, dim=-1).indices
        hit = top == labels[:, None]
        self.correct1 += int(hit[:, 0].sum())
        self.correct5 += int(hit.any(dim=1).sum())
        self.loss_sum += float(F.cross_entropy(outputs, labels, reduction="sum"))
        self.n += int(labels.numel())

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"accuracy": self.correct1 / n, "top5": self.correct5 / n, "loss": self.loss_sum / n}
