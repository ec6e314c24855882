"""DHO: dual-head optimisation, a CE head and a separate KD head on one backbone, mixed at inference.

Dual-head optimisation: CE on the student's own head, KD on a second head of the method's own.

With phi the student's pooled features (tap ``student``, default ``pooled``), z_ce = the student's logits
(its own head) and z_kd = W_kd phi + b_kd (a linear head built at set-up, trained with the student),

    L = ce_weight * CE(z_ce[labelled], y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_kd / T)),

CE over the labelled rows only (label -100 = unlabelled; 0 when a batch has none), the KL over all rows.
``kd_reduction="split"`` (default): batchmean over the labelled rows plus batchmean over the unlabelled rows,
the official KL(x_l) + KL(x_u) of two equal-size loaders (a batch with no unlabelled rows gets one batchmean);
``"all"``: one batchmean over every row, which halves the KD weight against the official loss when the two
groups are of equal size. Gradient routing comes from the structure: the KD terms never reach the CE head, CE
never reaches the KD head, the backbone gets both. ``kd_head="normalized"`` is the ImageNet-semi variant
z_kd = 100 (W_kd phi/||phi|| + b). ``kd_head="shared"`` is the paper's single-head KD control: the same loss with
z_kd = z_ce (no second head, both terms on the student's own head; inference is the student alone).

Inference (:meth:`inference_model`): p = a softmax(z_ce) + (1 - a) softmax(z_kd / b); the wrapper returns
log p so arg-max and CE are meaningful. With ``fit_combiner`` (a, b) are re-fitted after every epoch on the
``"val"`` split over a in {0, 0.05, ..., 1} and b in {0.5, 0.75, 1, 1.25, 1.5, 2, 4} (:func:`search_combiner`)
and kept in buffers; with no val split (config ``data.val_per_class``), or ``fit_combiner=False``, they stay
at ``combine_a``, ``combine_b`` (default 0.5, 0.5: the ImageNet-semi setting) and a warning says so.

Defaults follow the official few-shot script ``train_others.py``: T = 2, CE and KD weights 0.5 and 0.5, both
heads default-initialised linear layers. Note the official code names the KD-head weight alpha (its alpha
= 1 - a here). Not reproduced: the two-loader (labelled + unlabelled) sampler and the selection of the
checkpoint of best validation accuracy (the run keeps its last epoch, with that epoch's (a, b)).

Paper: Simple Semi-supervised Knowledge Distillation from Vision-Language Models via Dual-Head Optimization, 2025,
arXiv:2505.07675; code: https://github.com/erjui/DHO.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import IGNORE_INDEX
from distill.core.method import CLASSIFICATION_TASKS, EpochContext, Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, logits_of
from distill.core.taps import FeatureTaps
from distill.methods.logits.losses import cross_entropy, kl_batchmean

#: the official grids (``train_others.py``): the CE-head weight a and the KD-head temperature b
A_GRID = tuple(round(0.05 * i, 2) for i in range(21))


B_GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


def combine_heads(z_ce: torch.Tensor, z_kd: torch.Tensor, a: float | torch.Tensor,
                  b: float | torch.Tensor) -> torch.Tensor:
    """log(a softmax(z_ce) + (1 - a) softmax(z_kd / b)), computed stably (a = 0 or 1 gives a -inf branch that
    log-sum-exp drops). Its arg-max is DHO's prediction and its exp sums to 1, so CE on it is meaningful."""
    a = torch.as_tensor(a, dtype=torch.float32, device=z_ce.device)
    b = torch.as_tensor(b, dtype=torch.float32, device=z_ce.device)
    first = torch.log(a) + F.log_softmax(z_ce.float(), -1)
    second = torch.log1p(-a) + F.log_softmax(z_kd.float() / b, -1)
    return torch.logsumexp(torch.stack([first, second]), dim=0)


@torch.no_grad()
def search_combiner(z_ce: torch.Tensor, z_kd: torch.Tensor, labels: torch.Tensor,
                    a_grid: tuple[float, ...] = A_GRID, b_grid: tuple[float, ...] = B_GRID,
                    ) -> tuple[float, float, float]:
    """The (a, b) of best top-1 accuracy of a softmax(z_ce) + (1 - a) softmax(z_kd / b), and that accuracy.

    Search order and ties as in the official ``evaluate(search_param=True)``: b in grid order outside, the
    KD-head weight 1 - a rising from 0 inside, first strict improvement kept; starting from (a, b) = (1, 1) at
    accuracy 0. Unlabelled rows (-100) are ignored.
    """
    keep = labels != IGNORE_INDEX
    z_ce, z_kd, labels = z_ce[keep].float(), z_kd[keep].float(), labels[keep]
    if labels.numel() == 0:
        raise ValueError("dho: the validation split has no labelled example to fit the combiner on")
    p_ce = F.softmax(z_ce, -1)
    best = (1.0, 1.0, 0.0)
    for b in b_grid:
        p_kd = F.softmax(z_kd / b, -1)
        for a in sorted(a_grid, reverse=True):
            pred = (a * p_ce + (1 - a) * p_kd).argmax(-1)
            acc = (pred == labels).float().mean().item()
            if acc > best[2]:
                best = (float(a), float(b), acc)
    return best


class DualHeadInference(nn.Module):
    """The student with DHO's KD head: returns :func:`combine_heads` of the student's own logits (CE head) and
    the KD head on the tapped feature, with the method's current (a, b)."""

    def __init__(self, student: nn.Module, method: DHO):
        super().__init__()
        self.student = student
        self.method = method
        self.taps = FeatureTaps(student, [method.student_feature])
        self.training = student.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.taps.capture() as feats:
            z_ce = logits_of(self.student(x))
        z_kd = self.method.kd_logits(feats[self.method.student_feature])
        return combine_heads(z_ce, z_kd, self.method.mix_a, self.method.mix_b)


@register_method(
    "dho",
    family="logits",
    paper="Simple Semi-supervised Knowledge Distillation from Vision-Language Models via Dual-Head Optimization",
    year=2025,
    arxiv="2505.07675",
    repo="https://github.com/erjui/DHO",
    aliases=("dual_head",),
)
class DHO(Method):
    """Dual-head optimisation: CE on the student's own head, KD on a second head of the method's own."""

    tasks = CLASSIFICATION_TASKS

    needs_labels = True

    def __init__(
        self,
        student: str = "pooled",
        temperature: float = 2.0,
        ce_weight: float = 0.5,
        kd_weight: float = 0.5,
        kd_reduction: Literal["all", "split"] = "split",
        kd_head: Literal["linear", "normalized", "shared"] = "linear",
        fit_combiner: bool = True,
        combine_a: float = 0.5,
        combine_b: float = 0.5,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= combine_a <= 1.0:
            raise ValueError(f"combine_a must be in [0, 1], got {combine_a}")
        if combine_b <= 0:
            raise ValueError(f"combine_b must be positive, got {combine_b}")
        self.student_feature = student
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)
        self.kd_weight = float(kd_weight)
        self.kd_reduction = kd_reduction
        self.kd_head_kind = kd_head
        self.fit_combiner = fit_combiner
        self.head: nn.Linear | None = None
        self.register_buffer("mix_a", torch.tensor(float(combine_a)))
        self.register_buffer("mix_b", torch.tensor(float(combine_b)))
        self.register_buffer("val_accuracy", torch.tensor(-1.0))
        self._warned = False

    def student_taps(self) -> list[str]:
        return [self.student_feature]

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        phi = student.feature(self.student_feature).flatten(1)
        num_classes = student.logits.shape[-1]
        if teacher is not None and teacher.logits.shape[-1] != num_classes:
            raise ValueError(f"dho: student has {num_classes} outputs but the teacher {teacher.logits.shape[-1]}")
        if self.kd_head_kind != "shared":
            self.head = nn.Linear(phi.shape[1], num_classes).to(phi.device)

    def kd_logits(self, features: torch.Tensor) -> torch.Tensor:
        """z_kd of the KD head on the tapped student features."""
        if self.head is None:
            raise RuntimeError("DHO.setup() must run before the first step (the trainer does this)")
        phi = features.flatten(1)
        if self.kd_head_kind == "normalized":
            return 100.0 * self.head(F.normalize(phi.float(), dim=1).to(phi.dtype))
        return self.head(phi)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'dho' needs a teacher, but none is configured")
        z_ce = inputs.student.logits
        shared = self.kd_head_kind == "shared"
        z_kd = z_ce if shared else self.kd_logits(inputs.student.feature(self.student_feature))
        zt = inputs.teacher.logits
        t2 = self.temperature**2
        labels = inputs.labels
        terms: dict[str, torch.Tensor] = {}
        if self.kd_reduction == "split" and labels is not None and not labels.is_floating_point():
            known = labels != IGNORE_INDEX
            kl = z_kd.float().sum() * 0.0
            for rows in (known, ~known):
                if bool(rows.any()):
                    kl = kl + kl_batchmean(z_kd[rows], zt[rows], self.temperature)
        else:
            kl = kl_batchmean(z_kd, zt, self.temperature)
        terms["kd"] = self.kd_weight * t2 * kl
        if self.ce_weight != 0.0:
            if labels is None:
                raise ValueError("method 'dho' needs labels for its CE head, but the batch has none")
            terms["ce"] = self.ce_weight * cross_entropy(z_ce, labels)
        return terms

    def inference_model(self, student: nn.Module) -> nn.Module:
        return student if self.kd_head_kind == "shared" else DualHeadInference(student, self)

    @torch.no_grad()
    def after_epoch(self, context: EpochContext) -> None:
        if not self.fit_combiner or self.kd_head_kind == "shared":
            return
        if "val" not in context.splits:
            if not self._warned:
                warnings.warn(f"dho: no 'val' split (set data.val_per_class), so the inference combiner keeps the "
                              f"fixed a = {self.mix_a.item():g}, b = {self.mix_b.item():g}", stacklevel=2)
                self._warned = True
            return
        z_ce, z_kd, labels = [], [], []
        for batch, out in context.student_outputs("val", [self.student_feature]):
            z_ce.append(out.logits.float())
            z_kd.append(self.kd_logits(out.feature(self.student_feature)).float())
            labels.append(batch.labels)
        a, b, acc = search_combiner(torch.cat(z_ce), torch.cat(z_kd), torch.cat(labels))
        self.mix_a.fill_(a)
        self.mix_b.fill_(b)
        self.val_accuracy.fill_(acc)
