"""MEAL V2: soft cross-entropy to an ensemble's averaged probabilities, with a jointly trained discriminator.

MEAL V2: match the ensemble's mean probabilities with a soft cross-entropy, plus an optional discriminator.

L_sim = -(1/B) sum_i sum_c pbar_ic log softmax(z_s,i)_c at T = 1, with pbar = softmax(teacher logits).
**The target must be the mean of the members' probabilities**: use ``EnsembleTeacher(models, reduce="probs")``
(YAML ``teacher: {ensemble: [...], reduce: probs}``), whose logits are log pbar, so softmax gives pbar
exactly. With ``reduce="logits"`` the target would be softmax of the mean logits, which is not MEAL V2 (a YAML
ensemble that leaves ``reduce`` unset is refused; an explicit ``reduce: logits`` is taken as an ablation); a
single teacher gives plain soft-CE distillation. No hard labels are used (soft-CE = KL(pbar || p_s) + H(pbar)).

Discriminator (``discriminator=True``, official): D maps a logit vector through 1x1 convolutions
C -> C//8 -> C//64 -> 2 with ReLU after every layer, and is trained with BCEWithLogits on the batch
[z_s (B rows); zbar (B rows)] with targets [1, 0] for student rows and [0, 1] for teacher rows:
L = L_sim + discriminator_weight * L_D, one backward pass over the student and D.
``mode="joint"`` (official; the maintainer calls it intended, D acts as a regulariser): the student also
minimises L_D. ``mode="adversarial"``: a gradient-reversal layer on z_s, so D minimises L_D while the student
receives -dL_D/dz_s (MEAL's stated adversarial intent).

What D sees of the teacher (``discriminator_input``): ``"mean_logits"`` (official) is zbar = (1/M) sum_m z_m,
read from a teacher tap on the whole model (``"."``), which the ensemble averages across members whatever its
``reduce``; ``"teacher_logits"`` feeds the teacher's logits as given (log pbar under ``reduce="probs"``),
for teacher sources that cannot tap the model (e.g. cached outputs).

Deviations (documented): official widths use plain integer division with C = 1000 (125, 15); for small C that
gives zero channels (C = 10: 1 then 0), so hidden widths are floored at ``d_min_width`` (default 8, which
leaves C >= 512 unchanged; 1 keeps the official widths wherever they are non-zero); ``d_reduction`` is the
official K = 8. The official D learning rate d_lr = 1e-4 is overwritten by the regime lr every epoch (a bug
the maintainer acknowledged), so D effectively trains at the student's lr, as here by default;
``d_lr_factor`` gives D its own learning rate, ``lr * d_lr_factor``, following the run's schedule (the
intended d_lr = 1e-4 at lr 0.01 is ``d_lr_factor: 0.01``).

Paper: MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks, NeurIPS Workshop 2020,
arXiv:2009.08453; code: https://github.com/szq0214/MEAL-V2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs

#: teacher tap on the whole model: its output, i.e. each member's logits; EnsembleTeacher averages features
#: across members, so this tap gives the averaged logits z-bar whatever the ensemble's ``reduce`` is.
WHOLE_MODEL_TAP = "."


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_i sum_c softmax(z_t)_ic log softmax(z_s)_ic at T = 1 (the teacher side is constant)."""
    target = F.softmax(teacher_logits.detach().float(), dim=-1)
    return -(target * F.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


class LogitDiscriminator(nn.Module):
    """MEAL V2's discriminator on logit vectors: 1x1 convolutions C -> C//k -> C//k^2 -> 2 with a ReLU after
    every layer, including the last (as the official code). Hidden widths are floored at ``min_width``."""

    def __init__(self, num_classes: int, reduction: int = 8, min_width: int = 1):
        super().__init__()
        h1 = max(min_width, num_classes // reduction)
        h2 = max(min_width, h1 // reduction)
        self.widths = (num_classes, h1, h2, 2)
        self.conv1 = nn.Conv2d(num_classes, h1, kernel_size=1)
        self.conv2 = nn.Conv2d(h1, h2, kernel_size=1)
        self.conv3 = nn.Conv2d(h2, 2, kernel_size=1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = logits[:, :, None, None]
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return x.flatten(1)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return -grad


def reverse_grad(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, negated gradient backward (gradient reversal)."""
    return _ReverseGrad.apply(x)


def discriminator_batch(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official layout: [student logits (B rows); teacher logits (B rows)], targets [1, 0] for the student
    rows and [0, 1] for the teacher rows."""
    b = student_logits.shape[0]
    x = torch.cat([student_logits.float(), teacher_logits.detach().float()], 0)
    target = torch.zeros(2 * b, 2, device=x.device)
    target[:b, 0] = 1.0
    target[b:, 1] = 1.0
    return x, target


@register_method(
    "mealv2",
    family="logits",
    paper="MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks",
    year=2020,
    arxiv="2009.08453",
    repo="https://github.com/szq0214/MEAL-V2",
    venue="NeurIPS Workshop",
    aliases=("meal_v2",),
)
class MealV2(Method):
    """MEAL V2: match the ensemble's mean probabilities with a soft cross-entropy, plus an optional discriminator."""

    tasks = CLASSIFICATION_TASKS

    ensemble_reduce = "probs"

    def __init__(
        self,
        discriminator: bool = True,
        mode: Literal["joint", "adversarial"] = "joint",
        discriminator_weight: float = 1.0,
        discriminator_input: Literal["mean_logits", "teacher_logits"] = "mean_logits",
        d_reduction: int = 8,
        d_min_width: int = 8,
        d_lr_factor: float = 1.0,
    ):
        super().__init__()
        if d_reduction < 1 or d_min_width < 1:
            raise ValueError("d_reduction and d_min_width must be >= 1")
        if d_lr_factor < 0:
            raise ValueError(f"d_lr_factor must be >= 0, got {d_lr_factor}")
        self.use_discriminator = bool(discriminator)
        self.mode = mode
        self.discriminator_weight = float(discriminator_weight)
        self.discriminator_input = discriminator_input
        self.d_reduction = int(d_reduction)
        self.d_min_width = int(d_min_width)
        self.d_lr_factor = float(d_lr_factor)
        self.discriminator: LogitDiscriminator | None = None

    def teacher_taps(self) -> list[str]:
        if self.use_discriminator and self.discriminator_input == "mean_logits":
            return [WHOLE_MODEL_TAP]
        return []

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if not self.use_discriminator:
            return
        num_classes = student.logits.shape[-1]
        self.discriminator = LogitDiscriminator(num_classes, self.d_reduction, self.d_min_width).to(
            student.logits.device)

    def optimizer_overrides(self) -> list[tuple[list[nn.Parameter], dict[str, float]]]:
        if self.discriminator is None or self.d_lr_factor == 1.0:
            return []
        return [(list(self.discriminator.parameters()), {"lr_factor": self.d_lr_factor})]

    def discriminator_teacher_logits(self, teacher: ModelOutput) -> torch.Tensor:
        if self.discriminator_input == "mean_logits":
            return teacher.feature(WHOLE_MODEL_TAP)
        return teacher.logits

    def discriminator_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """BCEWithLogits of D on the official batch; in ``adversarial`` mode the student side is reversed."""
        if self.discriminator is None:
            raise RuntimeError("MealV2.setup() must run before the first step (the trainer does this)")
        zs = reverse_grad(student_logits) if self.mode == "adversarial" else student_logits
        x, target = discriminator_batch(zs, teacher_logits)
        return F.binary_cross_entropy_with_logits(self.discriminator(x), target)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'mealv2' needs a teacher, but none is configured")
        zs = inputs.student.logits
        terms = {"soft_ce": soft_cross_entropy(zs, inputs.teacher.logits)}
        if self.use_discriminator:
            zbar = self.discriminator_teacher_logits(inputs.teacher)
            terms["disc"] = self.discriminator_weight * self.discriminator_loss(zs, zbar)
        return terms
