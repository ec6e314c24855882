"""DMAE: distillation inside masked-image pre-training.

Paper: Bai et al., "Masked Autoencoders Enable Efficient Knowledge Distillers", CVPR 2023, arXiv:2208.12256;
code github.com/UCSC-VLAA/DMAE (``models_mae_distill.py``, ``engine_distill.py``, ``pretrain.sh``), re-implemented
from the spec (../shared/methods/dense.md row 41).

The student is pre-trained as an MAE (:mod:`~distill.methods.dense.mae_reconstruction`) and, at the same time, the
output of one of its blocks is pulled toward the output of a block of an MAE-pretrained teacher computed on the same
visible patches (the task draws one mask for both: ``task: masked_image_pretraining``):

    h^S_k, h^T_j: block outputs before the final LayerNorm, (B, 1 + L_vis, d), the cls token included
    L_dist = mean_{b,t,c} | n(h^T_j) - n(P h^S_k) |        n: L2 normalisation over channels, h^T detached
    L = L_rec + L_dist                                      (weight 1; summed over the aligned pairs)

P is ``Linear(d_S -> d_T)`` (``projector: linear``, DMAE's default "fc-1layer"); ``projector: mlp`` is
Linear-GELU-Linear (one of DMAE's MLP variants, hidden width d_T). ``loss: l1`` is the default, ``l2`` the
squared error. The teacher is frozen (eval mode, no gradient) and only needs to run up to block j: set
``teacher.options.stop_after_block: j`` (the truncated forward gives the identical loss; DMAE's released engine
runs the whole teacher encoder and decoder and drops the prediction). Defaults (``pretrain.sh``): student block 8 ↔
teacher block 17 (0-based, 3/4 depth of ViT-B and ViT-L), mask ratio 0.75.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import FeaturePairs, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher


def normalized_distance(student: torch.Tensor, teacher: torch.Tensor, loss: str = "l1") -> torch.Tensor:
    """mean |n(teacher) - n(student)| (``l1``) or mean (n(teacher) - n(student))^2 (``l2``), n: L2 normalisation
    over the last dimension."""
    diff = F.normalize(teacher.float(), dim=-1) - F.normalize(student.float(), dim=-1)
    return diff.abs().mean() if loss == "l1" else diff.pow(2).mean()


def projector(d_s: int, d_t: int, kind: str) -> nn.Module:
    """DMAE's projection from the student's width to the teacher's."""
    if kind == "linear":
        return nn.Linear(d_s, d_t)
    return nn.Sequential(nn.Linear(d_s, d_t), nn.GELU(), nn.Linear(d_t, d_t))


@register_method(
    "dmae",
    family="dense",
    paper="Masked Autoencoders Enable Efficient Knowledge Distillers",
    year=2023,
    arxiv="2208.12256",
    venue="CVPR",
    repo="https://github.com/UCSC-VLAA/DMAE",
)
class DMAE(FeaturePairs):
    """L1 between the L2-normalised teacher block output and the projected, normalised student block output, on
    the visible patches both encoders share (see the module docstring)."""

    tasks = frozenset({"masked_image_pretraining"})
    method_name = "dmae"

    def __init__(self, student: list[str] | str | None = None, teacher: list[str] | str | None = None,
                 weights: list[float] | None = None, projector: Literal["linear", "mlp"] = "linear",
                 loss: Literal["l1", "l2"] = "l1"):
        super().__init__()
        if projector not in ("linear", "mlp"):
            raise ValueError(f"projector must be 'linear' or 'mlp', got {projector!r}")
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
        self.tap_pairs([student] if isinstance(student, str) else student,
                       [teacher] if isinstance(teacher, str) else teacher, weights, default=["b5"])
        self.projector_kind, self.loss = projector, loss
        self.projectors = nn.ModuleList()

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        t = self.setup_teacher(teacher)
        for s_name, t_name in zip(self.student_features, self.teacher_features, strict=True):
            s, tt = student.feature(s_name), t.feature(t_name)
            if s.shape[:-1] != tt.shape[:-1]:
                raise ValueError(f"dmae: student {s_name} {tuple(s.shape)} and teacher {t_name} {tuple(tt.shape)} "
                                 "cover different tokens (do both see the batch's mask?)")
            self.projectors.append(projector(s.shape[-1], tt.shape[-1], self.projector_kind).to(s.device))

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if len(self.projectors) != len(self.student_features):
            raise RuntimeError("DMAE.setup() must run before the first step (the trainer does this)")
        t_out = require_teacher(inputs, self.method_name)
        total = torch.zeros((), device=inputs.student.feature(self.student_features[0]).device)
        for proj, s_name, t_name, w in zip(self.projectors, self.student_features, self.teacher_features,
                                           self.pair_weights, strict=True):
            s = inputs.student.feature(s_name)
            t = t_out.feature(t_name).detach()
            total = total + w * normalized_distance(proj(s.float()), t, self.loss)
        return {"loss": total}
