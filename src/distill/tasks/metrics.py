"""Metrics shared by the classification families (images, sentences, feature vectors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.batch import Batch

#: the k of the top-k accuracy the classification families report (as ``top5``)
TOP_K = 5


def classification_metric_names(num_classes: int | None) -> tuple[str, ...]:
    """The keys :class:`ClassificationMetrics` reports for ``num_classes`` outputs: ``top5`` only when there are more
    than 5 classes (with 5 or fewer every label is among the top 5 and the number is always 1.0, so it is left out
    rather than reported as a meaningless 1.0). None: not known yet (every key that may appear)."""
    if num_classes is not None and num_classes <= TOP_K:
        return ("accuracy", "loss")
    return ("accuracy", f"top{TOP_K}", "loss")


class ClassificationMetrics:
    """Running top-1 accuracy, top-5 accuracy (only with more than 5 classes: see
    :func:`classification_metric_names`) and mean cross-entropy."""

    def __init__(self) -> None:
        self.n = 0
        self.correct1 = 0
        self.correctk = 0
        self.loss_sum = 0.0
        self.num_classes: int | None = None

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        labels = batch.labels
        assert labels is not None
        outputs = outputs.float()
        self.num_classes = int(outputs.shape[-1])
        k = min(TOP_K, self.num_classes)
        top = outputs.topk(k, dim=-1).indices
        hit = top == labels[:, None]
        self.correct1 += int(hit[:, 0].sum())
        self.correctk += int(hit.any(dim=1).sum())
        self.loss_sum += float(F.cross_entropy(outputs, labels, reduction="sum"))
        self.n += int(labels.numel())

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        out = {"accuracy": self.correct1 / n, "loss": self.loss_sum / n}
        if self.num_classes is not None and self.num_classes > TOP_K:
            out[f"top{TOP_K}"] = self.correctk / n
        return {k: out[k] for k in classification_metric_names(self.num_classes) if k in out}
