"""GLNN: an MLP trained on a GNN's soft labels of every node plus the hard labels of the training nodes
(Zhang et al., ICLR 2022):

  L = lam * CE(labelled nodes) + (1 - lam) * (1/N) sum_i KL(softmax(z^T_i / T) || softmax(z^S_i / T))

the batch mean over all N nodes of the batch. With T = 1 this is FF-G2M's ``ablation_mode`` 2, i.e. its
LFD term on self-loops only and no HFD (the GNN-to-MLP baseline of the FF-G2M paper).

Paper: Graph-less Neural Networks: Teaching Old MLPs New Tricks via Distillation, ICLR 2022, arXiv:2110.08727; code:
https://github.com/snap-research/graphless-neural-networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.method import register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.graph.base import GraphKD, kl_rows


@register_method(
    "glnn",
    family="graph",
    paper="Graph-less Neural Networks: Teaching Old MLPs New Tricks via Distillation",
    year=2022,
    arxiv="2110.08727",
    repo="https://github.com/snap-research/graphless-neural-networks",
    venue="ICLR",
)
class GLNN(GraphKD):
    """GLNN: an MLP trained on a GNN's soft labels of every node plus the hard labels of the training nodes
    (Zhang et al., ICLR 2022):"""

    method_name = "glnn"

    def __init__(self, lam: float = 0.4, temperature: float = 1.0):
        super().__init__(lam)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        pass  # GLNN does not read the edges

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        zs = inputs.student.logits
        zt = require_teacher(inputs, "glnn").logits.detach()
        t = self.temperature
        kd = kl_rows(F.log_softmax(zt.float() / t, dim=-1), F.log_softmax(zs.float() / t, dim=-1)).mean()
        return {"ce": self.lam * self._ce(inputs, zs), "kd": (1.0 - self.lam) * kd}
