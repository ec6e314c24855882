"""Dynamic Y-KD: continual learning with a teacher that shares the student's feature extractor, a branch grown per
task, one head over all branches, and checkpoint averaging of the head.

Paper: Dynamic Y-KD: A Hybrid Approach to Continual Instance Segmentation, 2023, arXiv:2303.06015. No code is
stored for the paper; the author's follow-up DynYKD/Continual-Plant-Detection (ICCV-W 2023, arXiv:2304.06619)
implements it (``tools/train_incremental_same_backbone.py``, ``maskrcnn_benchmark/distillation/distillation.py``,
``tools/test_same_backbone.py``). This is the classification analogue of the spec (pipelines.md, row 25): the
Mask R-CNN heads become a linear class head, res5 (in the RoI head, i.e. in the branch) becomes ``conv_branch``.

At task t (t >= 1), with trunk phi, branches b_1..b_t and head W_t (#seen_t x F*t):

    b_t       = copy(b_{t-1}); b_1..b_{t-1} frozen; phi trainable or frozen (``trunk_trainable``)
    z_S(x)    = W_t [b_1(phi x); ...; b_t(phi x)]                                  (student logits, all seen classes)
    z_T(x)    = W_{t-1} [b'_1(h); ...; b'_{t-1}(h)],  h = stopgrad(phi x)         (teacher: the frozen snapshot of the
                previous step's branches and head, run on the *student's* trunk output: the "Y"; no second trunk
                pass, no gradient into phi through the teacher)
    L         = CE(z_S, y) + lambda * mean_{i, c in old} (zbar_S,ic - zbar_T,ic)^2,  zbar = z - mean_c z
                (the L2 distillation of the old-class logits; the mean-centring ("logits normalised") follows the
                ILOD/MMA lineage of ``distillation.py`` and is our reading: reconstructed)
    W_t init  = W_{t-1} in the old rows / old columns, 0 in the old rows' new columns (the new branch starts as a
                copy, so the old logits start unchanged), default init in the new rows.

Checkpoint averaging at test (no training): W = w * W_t + (1 - w) * pad(W_{t-1}) for the old rows, the new rows from
W_t, pad() adding zero columns for the new branch (:func:`averaged_head`; :mod:`distill.train.averaging` is the
generic step). w = 1 is the trained head, w = 0 the old head on the old rows.

Flags give the spec's baselines in the same file: ``distill_weight=0, grow_branches=False``: fine-tuning;
``shared_trunk=False, grow_branches=False``: LwF (a separate frozen copy of the whole previous model, trunk included,
with the same L2 logit distillation so that only the Y structure differs); ``grow_branches=False``: Y-KD;
``trunk_trainable``: whether phi keeps training after task 0 (the test script loads the first step's backbone,
so the code's effective setting is unverified; a flag).
"""

from __future__ import annotations

import copy
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.core.registry import Provenance
from distill.streams.learners import Learner, TaskInfo, conv_branch, conv_trunk, register_learner


def centred_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean_{i,c} ((s_ic - mean_c s_i) - (t_ic - mean_c t_i))^2: the L2 distillation of mean-centred logits."""
    s = student - student.mean(dim=1, keepdim=True)
    t = teacher - teacher.mean(dim=1, keepdim=True)
    return (s - t).pow(2).mean()


def pad_columns(w: torch.Tensor, columns: int) -> torch.Tensor:
    """``w`` with zero columns appended up to ``columns``."""
    return F.pad(w, (0, columns - w.shape[1]))


def averaged_head(new_w: torch.Tensor, new_b: torch.Tensor, old_w: torch.Tensor, old_b: torch.Tensor,
                  w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W = w * W_t + (1 - w) * pad(W_{t-1}) on the old rows (the first ``old_w.shape[0]``), W_t's new rows."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"averaging weight must be in [0, 1], got {w}")
    n_old = old_w.shape[0]
    weight, bias = new_w.clone(), new_b.clone()
    weight[:n_old] = w * new_w[:n_old] + (1 - w) * pad_columns(old_w, new_w.shape[1])
    bias[:n_old] = w * new_b[:n_old] + (1 - w) * old_b
    return weight, bias


@register_learner("dynamic_ykd")
class DynamicYKD(Learner):
    """See the module docstring."""

    provenance = Provenance("Dynamic Y-KD: A Hybrid Approach to Continual Instance Segmentation", 2023,
                            "2303.06015", "https://github.com/DynYKD/Continual-Plant-Detection")

    def __init__(self, num_classes: int, channels: int, width: int = 32, feature_dim: int = 64,
                 distill_weight: float = 1.0, grow_branches: bool = True, shared_trunk: bool = True,
                 trunk_trainable: bool = True,
                 average_weight: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0) -> None:
        super().__init__(num_classes, channels)
        self.feature_dim = feature_dim
        self.distill_weight = distill_weight
        self.grow_branches = grow_branches
        self.shared_trunk = shared_trunk
        self.trunk_trainable = trunk_trainable
        self.average_weight = average_weight
        self.trunk = conv_trunk(channels, width)
        self.branches = nn.ModuleList([conv_branch(width, feature_dim)])
        self.head = nn.Linear(feature_dim, 1)
        self.teacher_trunk: nn.Module | None = None
        self.teacher_branches: nn.ModuleList | None = None
        self.teacher_head: nn.Linear | None = None
        self.class_order: list[int] = []  # head row r is class class_order[r] (tasks in order)
        self.trunk_calls = 0  # counts trunk passes (a test checks the teacher adds none)

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        n_old = len(self.class_order)
        self.class_order = [*self.class_order, *task.new]
        if task.index == 0:
            self.head = nn.Linear(self.feature_dim * len(self.branches), len(self.class_order))
            return
        frozen = lambda m: copy.deepcopy(m).requires_grad_(False)  # noqa: E731
        self.teacher_branches = frozen(self.branches)
        self.teacher_head = frozen(self.head)
        self.teacher_trunk = None if self.shared_trunk else frozen(self.trunk)
        if self.grow_branches:
            for b in self.branches:
                b.requires_grad_(False)
            self.branches.append(copy.deepcopy(self.branches[-1]).requires_grad_(True))
        self.trunk.requires_grad_(self.trunk_trainable)
        old = self.head
        head = nn.Linear(self.feature_dim * len(self.branches), len(self.class_order))
        with torch.no_grad():
            head.weight[:n_old] = pad_columns(old.weight, head.weight.shape[1])
            head.bias[:n_old] = old.bias
        self.head = head

    def features(self, h: torch.Tensor, branches: nn.ModuleList) -> torch.Tensor:
        return torch.cat([b(h) for b in branches], dim=1)

    def trunk_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.trunk_calls += 1
        return self.trunk(x)

    def teacher_logits(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The previous step's (branches, head) on the student's trunk output ``h`` (Y-KD), or on the frozen copy's
        own trunk (LwF); never a gradient."""
        assert self.teacher_head is not None and self.teacher_branches is not None
        with torch.no_grad():
            th = h.detach() if self.teacher_trunk is None else self.teacher_trunk(x)
            return self.teacher_head(self.features(th, self.teacher_branches))

    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        h = self.trunk_forward(x)
        z = self.head(self.features(h, self.branches))
        rows = torch.tensor([self.class_order.index(int(c)) for c in y])
        terms = {"ce": F.cross_entropy(z, rows)}
        if self.teacher_head is not None and self.distill_weight > 0:
            n_old = self.teacher_head.out_features
            terms["kd"] = self.distill_weight * centred_l2(z[:, :n_old], self.teacher_logits(x, h))
        return terms

    def head_for_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.teacher_head is None or self.average_weight == 1.0:
            return self.head.weight, self.head.bias
        return averaged_head(self.head.weight, self.head.bias, self.teacher_head.weight, self.teacher_head.bias,
                             self.average_weight)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.head_for_test()
        z = F.linear(self.features(self.trunk(x), self.branches), weight, bias)
        out = torch.full((len(x), self.num_classes), float("-inf"))
        out[:, self.class_order] = z
        return out
