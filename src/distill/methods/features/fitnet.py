"""FitNet hint loss: L = MSE(r(f_s), f_t), with r a learned regressor and f_t constant.

``reduction="mean"`` divides the squared error by B*C*H*W (RepDistiller/mdistiller, weight 100 on
CIFAR); ``"sum"`` is torchdistill's stage-1 form. The regressor (see :func:`conv_regressor`) is built
from the feature shapes at set-up and trained with the student. Default taps: ``f2`` for both models
(RepDistiller's hint layer 2, the output of the second stage).

Paper: FitNets: Hints for Thin Deep Nets, ICLR 2015, arXiv:1412.6550.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import CLASSIFICATION_TASKS, DENSE_TASKS, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.features.adapters import conv_regressor


@register_method(
    "fitnet",
    family="features",
    paper="FitNets: Hints for Thin Deep Nets",
    year=2015,
    arxiv="1412.6550",
    venue="ICLR",
    aliases=("hint",),
)
class FitNet(FeaturePair):
    """FitNet hint loss: L = MSE(r(f_s), f_t), with r a learned regressor and f_t constant."""

    tasks = CLASSIFICATION_TASKS | DENSE_TASKS

    method_name = "fitnet"

    def __init__(
        self,
        student: str = "f2",
        teacher: str = "f2",
        reduction: Literal["mean", "sum"] = "mean",
        relu: bool = True,
    ):
        super().__init__()
        self.tap_pair(student, teacher)
        self.reduction = reduction
        self.relu = relu
        self.regressor: nn.Module | None = None

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        s, t = self.setup_features(student, teacher)
        self.regressor = conv_regressor(s.shape, t.shape, relu=self.relu).to(s.device)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.regressor is None:
            raise RuntimeError("FitNet.setup() must run before the first step (the trainer does this)")
        s, t = self.step_features(inputs)
        return {"loss": F.mse_loss(self.regressor(s).float(), t.float(), reduction=self.reduction)}
