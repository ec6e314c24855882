"""ORR: occlusion-robust representations (ORTrack), an invariance loss between the clean and the Cox-masked view.

Paper: Wu et al., "Learning Occlusion-Robust Vision Transformers for Real-Time UAV Tracking" (ORTrack), CVPR 2025,
arXiv:2504.09228; code github.com/wuyou3474/ORTrack (loss read from the fork zyzyzkzk090909-pixel/vittracking,
``lib/models/ortrack/ortrack.py`` and ``lib/train/actors/ortrack.py``, first commit; identity with the official code
unverified). Re-implemented from ../shared/methods/dense.md row 1.

With phi the student's named feature (the tracker: the backbone's output tokens after the final LayerNorm; here any
tap, e.g. a CNN's stage-3 map), m a Cox block mask (:mod:`distill.methods.augmentation.cox_block_mask`) and sg the
stop-gradient:

    L_orr = mean_{b, t, c} ( phi(x) - sg[ phi(m * x) ] )^2

The stop-gradient is on the **masked** branch: the clean features are pulled toward the masked ones. The student runs
twice per step: the clean pass is the step's ordinary forward; the masked pass is run by this method (no gradient,
the student in its current mode, as the official actor does). The official tracker is a ViT (LayerNorm only), where
the masked pass has no side effect; in a student with BatchNorm a train-mode pass also moves the running statistics
toward those of masked images, which shifts every later evaluation (clean images are then normalised with partly
masked statistics). ``masked_bn: frozen`` (the default) puts the running statistics back after the masked pass, so
only the loss acts, as in the ViT; ``masked_bn: update`` keeps the plain second pass (an ablation).
Default weight in ORTrack: 2e-4 (sized against tracking losses). The masks are drawn in ``transform_batch`` from the
trainer's generator, so a resumed run replays them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from distill.core.batch import Batch
from distill.core.method import IMAGE_TASKS, TapMethod, register_method
from distill.core.norms import frozen_batchnorm_statistics
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import run_with_taps
from distill.methods.augmentation.cox_block_mask import ORTRACK, cox_masks, masked_view, uniform_block_masks


@register_method("orr_invariance", family="features", aliases=("orr",), **ORTRACK)
class ORRInvariance(TapMethod):
    """MSE between the student's clean feature and its (stop-gradient) feature on a Cox-masked view."""

    tasks = IMAGE_TASKS
    needs_teacher = False
    method_name = "orr_invariance"

    def __init__(self, feature: str = "f3", ratio: float = 0.3, block: int = 4, sigma: float | None = None,
                 sampler: str = "cox", masked_bn: str = "frozen"):
        super().__init__()
        if masked_bn not in ("frozen", "update"):
            raise ValueError(f"masked_bn must be 'frozen' or 'update', got {masked_bn!r}")
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {ratio}")
        if sampler not in ("cox", "uniform"):
            raise ValueError(f"sampler must be 'cox' or 'uniform', got {sampler!r}")
        self.feature, self.ratio, self.block, self.sigma, self.sampler = feature, ratio, block, sigma, sampler
        self.masked_bn = masked_bn
        # (student, task), kept in a tuple so that the student is not registered as a sub-module of the method
        # (its weights would otherwise be in the method's parameters and state)
        self._runner: tuple[Any, Any] | None = None
        self._masked: Batch | None = None

    def student_taps(self) -> list[str]:
        return [self.feature]

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        if info.student is None or info.task is None:
            raise ValueError("orr_invariance runs the student on the masked view: the run must pass the student and "
                             "the task at set-up (the trainer does)")
        self._runner = (info.student, info.task)

    def masks(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, hgt, wid = images.shape
        if self.sampler == "uniform":
            return uniform_block_masks(b, hgt, wid, self.block, self.ratio, generator)
        return cox_masks(b, hgt, wid, self.block, self.ratio, self.sigma, generator)[0]

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Draw the step's masks and keep the masked view for :meth:`forward` (the batch itself is unchanged)."""
        masks = self.masks(batch.inputs, generator)
        self._masked = Batch(inputs=masked_view(batch.inputs, masks), labels=batch.labels, indices=batch.indices,
                             meta=dict(batch.meta))
        return batch

    def masked_feature(self) -> torch.Tensor:
        if self._masked is None or self._runner is None:
            raise RuntimeError("orr_invariance: no masked view for this step (transform_batch runs before each "
                               "training step; set-up must have run)")
        student = self._runner[0]
        keep = frozen_batchnorm_statistics(student) if self.masked_bn == "frozen" else contextlib.nullcontext()
        with torch.no_grad(), keep:
            out = run_with_taps(student, self._runner[1], self._masked, [self.feature])
        self._masked = None
        return out.feature(self.feature)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        clean = inputs.student.feature(self.feature)
        masked = self.masked_feature().detach()
        return {"loss": (clean.float() - masked.float()).pow(2).mean()}
