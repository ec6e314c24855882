"""MIX-KD's batch mixup, as a transform only (returns no loss terms).

FMU: x~_i = lam_i x_rp1(i) + (1 - lam_i) x_rp2(i), y~_i = lam_i e_{y_rp1(i)} + (1 - lam_i) e_{y_rp2(i)},
with two random permutations rp1, rp2 and lam_i ~ Beta(beta, beta) drawn per sample (not per batch, unlike
Zhang et al.'s mixup, arXiv 1710.09412). PMU (partial mixup): as FMU, with lam = 1 on floor(B * partmixup)
row indices (``pmu_sampling="with_replacement"``, the official ``randint``, leaves about 1 - e^-0.9 = 59 % of
rows unmixed at partmixup 0.9; ``"exact"`` leaves exactly that fraction). See
:func:`~distill.methods.augmentation.mixing.sample_mixing`.

The mixed batch goes to the teacher and the student alike, and the targets become (B, K) soft labels, which
``ce``, ``kd`` (its CE term) and ``mixstd`` accept. Unlike the official plain-KD branch (which scored CE
against the un-mixed, un-permuted labels), a CE beside this transform uses the mixed targets. An unlabelled
source row (-100) contributes nothing to the target, so such a row's target sums to its labelled share.

Official code (hchoi71/MIX-KD ``helper/loops_mixstd.py``) hard-codes 100 classes and 3x32x32 images: here K
is the student's output width (read at set-up) and inputs may have any shape. Default strategy: ``fmu``
(plain per-sample mixup, the transform of the "KD + FMU" arms); ``mixkd`` defaults to the official PMU.

Paper: Understanding the Role of Mixup in Knowledge Distillation: An Empirical Study, WACV 2023, arXiv:2211.03946;
code: https://github.com/hchoi71/MIX-KD.
"""

from __future__ import annotations

from typing import Literal

import torch

from distill.core.batch import Batch
from distill.core.method import MIXABLE_TASKS, Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.augmentation.mixing import MIX_PROVENANCE, mix_batch, sample_mixing


@register_method("mixup", family="augmentation", **MIX_PROVENANCE)
class Mixup(Method):
    """MIX-KD's batch mixup, as a transform only (returns no loss terms)."""

    tasks = MIXABLE_TASKS

    needs_teacher = False
    needs_labels = True

    def __init__(self, strategy: Literal["fmu", "pmu"] = "fmu", beta: float = 1.0, partmixup: float = 0.9,
                 pmu_sampling: Literal["with_replacement", "exact"] = "with_replacement"):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if not 0.0 <= partmixup <= 1.0:
            raise ValueError(f"partmixup must be in [0, 1], got {partmixup}")
        self.strategy = strategy
        self.beta = float(beta)
        self.partmixup = float(partmixup)
        self.pmu_sampling = pmu_sampling
        self.num_classes: int | None = None

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        self.num_classes = int(student.logits.shape[-1])

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.num_classes is None:
            if batch.labels is not None and batch.labels.is_floating_point():
                self.num_classes = int(batch.labels.shape[-1])
            else:
                raise RuntimeError("Mixup.setup() must run before the first batch (the trainer does this)")
        rp1, rp2, lam = sample_mixing(len(batch), generator, self.strategy, self.beta, self.partmixup,
                                      self.pmu_sampling)
        return mix_batch(batch, rp1, rp2, lam, self.num_classes)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {}
