"""MIX-KD's recipe: the mixup transform of :class:`Mixup` (default PMU, partmixup 0.9, Beta(1, 1), official
with-replacement sampling) feeding the same mixed batch to teacher and student, plus the :class:`MixSTD`
loss (gamma 0.1, alpha 0.9). Equivalent to composing ``mixup`` (strategy pmu) with ``mixstd``; do not also
add a ``mixup`` entry, or the batch is mixed twice.

Paper: Understanding the Role of Mixup in Knowledge Distillation: An Empirical Study, WACV 2023, arXiv:2211.03946;
code: https://github.com/hchoi71/MIX-KD.
"""

from __future__ import annotations

from typing import Literal

import torch

from distill.core.batch import Batch
from distill.core.method import MIXABLE_TASKS, register_method
from distill.core.outputs import ModelOutput, RunInfo
from distill.methods.augmentation.mixing import MIX_PROVENANCE
from distill.methods.augmentation.mixup import Mixup
from distill.methods.logits.mixstd import MixSTD


@register_method("mixkd", family="logits", aliases=("mix_kd",), **MIX_PROVENANCE)
class MixKD(MixSTD):
    """MIX-KD's recipe: the mixup transform of :class:`Mixup` (default PMU, partmixup 0.9, Beta(1, 1), official
    with-replacement sampling) feeding the same mixed batch to teacher and student, plus the :class:`MixSTD`
    loss (gamma 0.1, alpha 0.9)."""

    tasks = MIXABLE_TASKS

    needs_labels = True

    def __init__(self, strategy: Literal["fmu", "pmu"] = "pmu", beta: float = 1.0, partmixup: float = 0.9,
                 pmu_sampling: Literal["with_replacement", "exact"] = "with_replacement", ce_weight: float = 0.1,
                 kl_weight: float = 0.9):
        super().__init__(ce_weight, kl_weight)
        self.mixer = Mixup(strategy, beta, partmixup, pmu_sampling)

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        self.mixer.setup(student, teacher, info)

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        return self.mixer.transform_batch(batch, generator)
