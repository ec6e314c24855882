"""Flow-of-solution-procedure (FSP) matrices: Gram matrices between pairs of layers, matched to the teacher's.

For pair k with maps (F1, F2) of each network: G = :func:`fsp_matrix` (B x C1 x C2), and by ``mode``:
``repdistiller`` (default): L = sum_k w_k mean_{b,i,j} (G_s - G_t)^2 (RepDistiller ``FSP``, an MSE);
``torchdistill``: L = (1/B) sum_k w_k sum_b sum_j ||G_s[b,:,j] - G_t[b,:,j]||_2 (``FSPLoss``, unsquared);
``paper``: L = (1/B) sum_k w_k sum_b ||G_s,b - G_t,b||_F^2.
``pool``: the larger map of a pair is adaptive-average-pooled (RepDistiller) or max-pooled (torchdistill).
C1 and C2 must match between student and teacher (error at set-up).

Default pairs are RepDistiller's consecutive (f0, f1), (f1, f2), (f2, f3) (``first`` / ``second``; teacher
lists default to the student's). Schedule as in RepDistiller: the loss is the initialisation stage
(``init_epochs`` 30, training the student's layers up to the last tap); in the main stage FSP adds nothing
(RepDistiller's ``-b 50`` multiplies a zero) unless ``main_stage`` is true, which is the default when
``init_epochs`` is 0.

Paper: A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning, CVPR 2017.
"""

from __future__ import annotations

from typing import Literal

import torch

from distill.core.method import IMAGE_TASKS, TapMethod, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.features.adapters import match_spatial
from distill.methods.features.stages import check_stage_options


def fsp_matrix(first: torch.Tensor, second: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """G_ij = (1 / HW) sum_hw F1_i,hw F2_j,hw, shape (B, C1, C2); the larger map is pooled to the smaller first."""
    first, second = match_spatial(first, second, pool)
    a, b = first.float().flatten(2), second.float().flatten(2)
    return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]


@register_method(
    "fsp",
    family="features",
    paper="A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning",
    year=2017,
    venue="CVPR",
)
class FSP(TapMethod):
    """Flow-of-solution-procedure (FSP) matrices: Gram matrices between pairs of layers, matched to the teacher's."""

    tasks = IMAGE_TASKS

    method_name = "fsp"

    def __init__(
        self,
        first: list[str] | None = None,
        second: list[str] | None = None,
        teacher_first: list[str] | None = None,
        teacher_second: list[str] | None = None,
        weights: list[float] | None = None,
        mode: Literal["repdistiller", "torchdistill", "paper"] = "repdistiller",
        pool: Literal["avg", "max"] = "avg",
        init_epochs: int = 30,
        main_stage: bool | None = None,
    ):
        super().__init__()
        self.first = list(first or ["f0", "f1", "f2"])
        self.second = list(second or ["f1", "f2", "f3"])
        self.teacher_first = list(teacher_first or self.first)
        self.teacher_second = list(teacher_second or self.second)
        n = len(self.first)
        if not (len(self.second) == len(self.teacher_first) == len(self.teacher_second) == n):
            raise ValueError("fsp: first, second, teacher_first and teacher_second must have the same length")
        self.pair_weights = [float(x) for x in (weights or [1.0] * n)]
        if len(self.pair_weights) != n:
            raise ValueError("fsp: one weight per layer pair is needed")
        self.mode = mode
        self.pool = pool
        self.init_epochs = int(init_epochs)
        self.main_stage = check_stage_options("fsp", self.init_epochs, main_stage)

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(self.first + self.second))

    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(self.teacher_first + self.teacher_second))

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        teacher = self.setup_teacher(teacher)
        for names in zip(self.first, self.second, self.teacher_first, self.teacher_second):
            s1, s2 = student.feature(names[0]).shape[1], student.feature(names[1]).shape[1]
            t1, t2 = teacher.feature(names[2]).shape[1], teacher.feature(names[3]).shape[1]
            if (s1, s2) != (t1, t2):
                raise ValueError(f"fsp: channel counts differ for pair {names}: student ({s1}, {s2}), teacher "
                                 f"({t1}, {t2}); FSP needs equal channels")

    def fsp_loss(self, inputs: StepInputs) -> torch.Tensor:
        teacher = require_teacher(inputs, "fsp")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for s1, s2, t1, t2, w in zip(self.first, self.second, self.teacher_first, self.teacher_second,
                                     self.pair_weights):
            gs = fsp_matrix(inputs.student.feature(s1), inputs.student.feature(s2), self.pool)
            gt = fsp_matrix(teacher.feature(t1), teacher.feature(t2), self.pool)
            if gs.shape != gt.shape:
                raise ValueError(f"fsp: FSP matrices differ in shape: {tuple(gs.shape)} vs {tuple(gt.shape)}")
            diff = gs - gt
            if self.mode == "repdistiller":
                term = diff.pow(2).mean()
            elif self.mode == "torchdistill":
                term = diff.norm(dim=1).sum() / diff.shape[0]
            else:
                term = diff.pow(2).sum() / diff.shape[0]
            total = total + w * term
        return total

    def init_loss(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {"loss": self.fsp_loss(inputs)}

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if not self.main_stage:
            return {}
        return {"loss": self.fsp_loss(inputs)}
