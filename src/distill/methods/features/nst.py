"""Neuron selectivity transfer: MMD between the teacher's and the student's distributions of channel maps.

Each channel's spatial map (over H*W, after pooling the larger map to the smaller) is L2-normalised and treated
as a sample; with the polynomial kernel k(a, b) = (a^T b)^2 (d = 2, c = 0),
L = sum_j w_j [mean_{b,i,i'} k(t_i, t_i') + mean_{b,j,j'} k(s_j, s_j') - 2 mean_{b,j,i} k(s_j, t_i)]
(:func:`nst_mmd`; C_s and C_t may differ). This is mdistiller's ``nst_loss`` (identical to RepDistiller's
``NSTLoss``, full form); torchdistill has no NST. Defaults: taps f1, f2, f3, pair weights 1; the CIFAR method
weight is 50 (``cfg.NST.FEAT_WEIGHT``) with CE 1.

Paper: Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, 2017, arXiv:1707.01219; code:
https://github.com/TuSimple/neuron-selectivity-transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.method import IMAGE_TASKS, FeaturePairs, register_method
from distill.core.outputs import StepInputs, require_teacher
from distill.methods.features.adapters import match_spatial


def nst_mmd(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Squared MMD with the kernel k(a, b) = (a^T b)^2 between the L2-normalised channel rows of two maps:
    mean k(t, t') [constant] + mean k(s, s') - 2 mean k(s, t), the means over the batch and channel pairs."""
    fs, ft = match_spatial(fs.float(), ft.float())
    s = F.normalize(fs.flatten(2), dim=2)
    t = F.normalize(ft.flatten(2), dim=2)

    def kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(t, t).detach() + kernel_mean(s, s) - 2 * kernel_mean(s, t)


@register_method(
    "nst",
    family="features",
    paper="Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
    year=2017,
    arxiv="1707.01219",
    repo="https://github.com/TuSimple/neuron-selectivity-transfer",
    aliases=("neuron_selectivity_transfer",),
)
class NST(FeaturePairs):
    """Neuron selectivity transfer: MMD between the teacher's and the student's distributions of channel maps."""

    tasks = IMAGE_TASKS

    method_name = "nst"

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
    ):
        super().__init__()
        self.tap_pairs(student, teacher, weights, ["f1", "f2", "f3"])

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "nst")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for s_name, t_name, w in zip(self.student_features, self.teacher_features, self.pair_weights):
            total = total + w * nst_mmd(inputs.student.feature(s_name), teacher.feature(t_name))
        return {"loss": total}
