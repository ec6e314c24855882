"""Confusion matrix and mean intersection-over-union of dense (per-pixel) predictions, shared by the segmentation
task's metrics and by methods that score a dense peer model (``cnn_vit_coop``)."""

from __future__ import annotations

import torch

from distill.core.batch import IGNORE_INDEX


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class, over pixels whose label is not ignored."""
    pred = logits.argmax(1)
    keep = labels != IGNORE_INDEX
    idx = labels[keep] * num_classes + pred[keep]
    return torch.bincount(idx.flatten().cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> tuple[float, torch.Tensor]:
    """mIoU = mean over classes c with a non-empty union of TP_c / (TP_c + FP_c + FN_c); also the per-class IoU
    (NaN where the class is neither present nor predicted)."""
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    return (float(iou[valid].mean()) if bool(valid.any()) else 0.0), iou
