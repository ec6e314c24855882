"""Graph distillation losses: FF-G2M and GLNN (GNN -> MLP) and D2DGN (unlearning by distillation).

All three read logits the graph task produced (one row per node of the batch, or one score per node pair for
link prediction). FF-G2M needs the graph's edges; it reads them from the task in :meth:`Method.setup`
(``RunInfo.task.edge_index``) and, on each step, keeps the edges whose two ends are both in the batch, so with
the full-batch setting of the paper (every node in one batch) it sees every edge.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.logits import cross_entropy


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probabilities: sum_k p_k (log p_k - log q_k)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def batch_edges(edge_index: torch.Tensor, nodes: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """The edges of ``edge_index`` with both ends among ``nodes``, renumbered to row positions in the batch."""
    pos = torch.full((num_nodes,), -1, dtype=torch.long, device=nodes.device)
    pos[nodes] = torch.arange(nodes.numel(), device=nodes.device)
    mapped = pos[edge_index.to(nodes.device)]
    return mapped[:, (mapped >= 0).all(dim=0)]


def lfd_loss(zs: torch.Tensor, zt: torch.Tensor, edges: torch.Tensor, self_loops: bool = True) -> torch.Tensor:
    """Low-frequency distillation: mean over pairs (i, j) of E_L of KL(softmax(zt_j) || softmax(zs_i)), E_L being
    ``edges`` (rows = positions) plus one self-loop per row when ``self_loops``."""
    if self_loops:
        loops = torch.arange(zs.shape[0], device=zs.device).repeat(2, 1)
        edges = torch.cat([edges, loops], dim=1)
    if edges.shape[1] == 0:
        return zs.sum() * 0.0
    log_ps = F.log_softmax(zs.float(), dim=-1)
    log_pt = F.log_softmax(zt.float(), dim=-1)
    i, j = edges[0], edges[1]
    return kl_rows(log_pt[j], log_ps[i]).mean()


def hfd_loss(zs: torch.Tensor, zt: torch.Tensor, edges: torch.Tensor, tau: float) -> torch.Tensor:
    """High-frequency distillation: mean over edges (i, j) of
    KL(softmax(|zt_i - zt_j| / tau) || softmax(|zs_i - zs_j| / tau)), the absolute value taken per class."""
    if edges.shape[1] == 0:
        return zs.sum() * 0.0
    i, j = edges[0], edges[1]
    ds = (zs[i].float() - zs[j].float()).abs() / tau
    dt = (zt[i].float() - zt[j].float()).abs() / tau
    return kl_rows(F.log_softmax(dt, dim=-1), F.log_softmax(ds, dim=-1)).mean()


class _GraphKD(Method):
    needs_teacher = True
    needs_labels = True
    method_name = "graph_kd"

    def __init__(self, lam: float) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.lam = float(lam)
        self.register_buffer("edge_index", torch.zeros(2, 0, dtype=torch.long), persistent=False)
        self.num_nodes = 0

    def set_graph(self, edge_index: torch.Tensor, num_nodes: int) -> None:
        """Give the method the graph's directed edges (self-loops are dropped; LFD adds one per node)."""
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]
        self.edge_index = edge_index.long().to(self.edge_index.device)
        self.num_nodes = int(num_nodes)

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        task = info.task
        if getattr(task, "edge_index", None) is None:
            raise ValueError(f"method {self.method_name!r} needs a graph task (one with edge_index), "
                             f"got {type(task).__name__}")
        self.set_graph(task.edge_index, task.num_nodes)

    def _batch(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if inputs.indices is None:
            raise ValueError(f"method {self.method_name!r} needs the batch's node ids (Batch.indices)")
        if self.num_nodes == 0:
            raise RuntimeError(f"method {self.method_name!r} has no graph: call setup() or set_graph() first")
        zt = require_teacher(inputs, self.method_name).logits.detach()
        return inputs.student.logits, zt, batch_edges(self.edge_index, inputs.indices, self.num_nodes)

    def _ce(self, inputs: StepInputs, zs: torch.Tensor) -> torch.Tensor:
        if inputs.labels is None:
            raise ValueError(f"method {self.method_name!r} needs labels (UNLABELED = -100 on unlabelled nodes)")
        return cross_entropy(zs, inputs.labels)


@register_method(
    "ffg2m",
    family="graph",
    paper="Extracting Low-/High- Frequency Knowledge from Graph Neural Networks and Injecting it into MLPs: "
          "An Effective GNN-to-MLP Distillation Framework",
    year=2023,
    arxiv="2305.10758",
    repo="https://github.com/LirongWu/FF-G2M",
    venue="AAAI",
    aliases=("ff_g2m",),
)
class FFG2M(_GraphKD):
    """FF-G2M: GNN-to-MLP distillation of low- and high-frequency knowledge (Wu et al., AAAI 2023).

    With teacher (GNN) logits z^T and student (MLP) logits z^S over the nodes, p = softmax(z):

      L_LFD = (1/|E_L|) sum_{(i,j) in E_L} KL(p^T_j || p^S_i),  E_L = directed edges + one self-loop per node
      L_HFD = (1/|E_H|) sum_{(i,j) in E_H} KL(softmax(|z^T_i - z^T_j| / tau) || softmax(|z^S_i - z^S_j| / tau)),
              E_H = the directed edges without self-loops, |.| per class on raw logits
      L = lam * CE(labelled nodes) + (1 - lam) * (L_LFD + L_HFD)

    as in the official code (LirongWu/FF-G2M ``src/train_and_eval.py``): KLDivLoss(batchmean) over edge pairs,
    the teacher logits constants (the best-val GNN, eval mode, full graph). ``lfd``/``hfd`` switch the terms off
    for the paper's ablations (LFD only, HFD only). Cora/GCN defaults of ``param/best_parameters.json``:
    lam 0.4, tau 1.5. Train full-batch on all nodes (labels hidden, i.e. -100, outside the training split).
    """

    method_name = "ffg2m"

    def __init__(self, lam: float = 0.4, tau: float = 1.5, lfd: bool = True, hfd: bool = True):
        super().__init__(lam)
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if not (lfd or hfd):
            raise ValueError("at least one of lfd and hfd must be on (plain CE is the 'ce' method)")
        self.tau = float(tau)
        self.lfd = lfd
        self.hfd = hfd

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        zs, zt, edges = self._batch(inputs)
        terms = {"ce": self.lam * self._ce(inputs, zs)}
        if self.lfd:
            terms["lfd"] = (1.0 - self.lam) * lfd_loss(zs, zt, edges)
        if self.hfd:
            terms["hfd"] = (1.0 - self.lam) * hfd_loss(zs, zt, edges, self.tau)
        return terms


@register_method(
    "glnn",
    family="graph",
    paper="Graph-less Neural Networks: Teaching Old MLPs New Tricks via Distillation",
    year=2022,
    arxiv="2110.08727",
    repo="https://github.com/snap-research/graphless-neural-networks",
    venue="ICLR",
)
class GLNN(_GraphKD):
    """GLNN: an MLP trained on a GNN's soft labels of every node plus the hard labels of the training nodes
    (Zhang et al., ICLR 2022):

      L = lam * CE(labelled nodes) + (1 - lam) * (1/N) sum_i KL(softmax(z^T_i / T) || softmax(z^S_i / T))

    the batch mean over all N nodes of the batch. With T = 1 this is FF-G2M's ``ablation_mode`` 2, i.e. its
    LFD term on self-loops only and no HFD (the GNN-to-MLP baseline of the FF-G2M paper).
    """

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


def binary_log_probs(scores: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log [s, 1 - s] with s = sigmoid(score) clamped to [eps, 1 - eps] (the link-prediction distribution)."""
    s = torch.sigmoid(scores.float()).clamp(eps, 1.0 - eps)
    return torch.stack([s, 1.0 - s], dim=-1).log()


@register_method(
    "d2dgn",
    family="graph-unlearning",
    paper="Distill to Delete: Unlearning in Graph Networks with Knowledge Distillation",
    year=2023,
    arxiv="2309.16173",
)
class D2DGN(Method):
    """D2DGN: unlearn part of a graph by distilling a student GNN from two frozen teachers (Sinha et al., 2023).

    The *preserver* P is the trained model; the *destroyer* D is a randomly initialised, untrained copy. The
    student S learns P's outputs on the retained elements and D's on the deleted ones:

      L = alpha * (1/|R|) sum_{r in R} KL(q^P_r || q^S_r) + (1 - alpha) * (1/|F|) sum_{f in F} KL(q^D_f || q^S_f)

    where q is softmax(class logits) for node rows (2-D logits), and for link-prediction rows (1-D scores
    s = z_u . z_v) the 2-class distribution [sigma(s), 1 - sigma(s)] with sigma clamped to [1e-5, 1 - 1e-5].

    The teacher output of a row is P's for retained rows and D's for forgotten rows; which rows are forgotten
    comes from the teacher source as the feature ``"forget"`` (a bool/0-1 per row), see
    :class:`distill.pipelines.graph_unlearning.PreserverDestroyer`.

    **Reconstructed, no official code exists.** Taken from the abstract and a third-party summary (two
    teachers, KL, L = alpha L_r + (1 - alpha) L_f) and a third-party re-implementation (OpenGU ``D2DGN``:
    untrained destroyer, alpha 0.5, re-initialised student, clamp 1e-5, one fixed negative set). The
    per-element means of L_r and L_f, and the student propagating over the retained graph (as GNNDelete's
    evaluation does) are our choices; the paper's feature (MSE) variant is not implemented here.
    """

    #: trained inside the edge-unlearning pipeline (its preserver/destroyer teacher is built there), not from a
    #: methods list of a YAML run
    pipeline: ClassVar[str | None] = "distill.pipelines.graph_unlearning"

    needs_teacher = True
    needs_labels = False

    def __init__(self, alpha: float = 0.5, eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.eps = float(eps)

    def _log_probs(self, z: torch.Tensor) -> torch.Tensor:
        return binary_log_probs(z, self.eps) if z.dim() == 1 else F.log_softmax(z.float(), dim=-1)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "d2dgn")
        forget = teacher.feature("forget").bool().flatten()
        zs, zt = inputs.student.logits, teacher.logits.detach()
        if forget.numel() != zs.shape[0]:
            raise ValueError(f"d2dgn: 'forget' has {forget.numel()} rows, the logits {zs.shape[0]}")
        kl = kl_rows(self._log_probs(zt), self._log_probs(zs))
        zero = zs.sum() * 0.0
        retain = kl[~forget].mean() if bool((~forget).any()) else zero
        forgot = kl[forget].mean() if bool(forget.any()) else zero
        return {"retain": self.alpha * retain, "forget": (1.0 - self.alpha) * forgot}
