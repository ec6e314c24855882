"""Cross-entropy with the labels: L = -(1/B) sum_b log softmax(z_s)[b, y_b].

For ``task: semantic_segmentation`` the mean runs over the labelled pixels (logits (B, K, H, W), labels (B, H, W)).

``label_smoothing`` follows ``torch.nn.functional.cross_entropy``. Unlabelled examples (label -100) are
skipped; soft targets (B, K) give -(1/B) sum_b sum_k y_bk log softmax(z_s)[b, k].
"""

from __future__ import annotations

import torch

from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import StepInputs, require_labels
from distill.methods.logits.losses import cross_entropy


@register_method("ce", family="supervised", paper="Cross-entropy on ground-truth labels", aliases=("cross_entropy",))
class CrossEntropy(Method):
    """Cross-entropy with the labels: L = -(1/B) sum_b log softmax(z_s)[b, y_b]."""

    tasks = CLASSIFICATION_TASKS | {"semantic_segmentation"}  # per pixel: logits (B, K, H, W), labels (B, H, W)

    needs_teacher = False
    needs_labels = True

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        logits = inputs.student.logits
        labels = require_labels(inputs, "ce")
        loss = cross_entropy(logits, labels, self.label_smoothing)
        return {"loss": loss}
