"""Pixel L1 to the ground truth: L = mean_{b,c,h,w} |y_s - y|, the reconstruction loss of super-resolution
(EDSR, SPAN and the NTIRE efficient-SR entries train with it)."""

from __future__ import annotations

import torch

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_labels


@register_method("l1", family="dense", paper="Pixel L1 reconstruction loss on the ground-truth image",
                 aliases=("pixel_l1",))
class PixelL1(Method):
    """Pixel L1 to the ground truth: L = mean |y_s - y| over batch, channels and pixels."""

    tasks = frozenset({"super_resolution"})

    needs_teacher = False
    needs_labels = True

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        target = require_labels(inputs, "l1")
        out = inputs.student.logits
        if out.shape != target.shape:
            raise ValueError(f"l1: the student's output {tuple(out.shape)} and the target {tuple(target.shape)} "
                             "differ in shape")
        return {"loss": (out.float() - target.float()).abs().mean()}
