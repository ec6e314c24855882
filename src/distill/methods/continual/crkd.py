"""Cr-KD: class-relation knowledge distillation for novel class discovery, on UNO's swapped-prediction clustering.

Paper: Class-relation Knowledge Distillation for Novel Class Discovery, ICCV 2023, arXiv:2307.09158; code:
kleinzcy/Cr-KD-NCD (UNO-based: ``rKD.py``, ``model/losses.py``, ``scripts/discover_cifar.yaml``), as summarised in
the spec (pipelines.md, row 27). A stream of kind ``novel_classes``: task 0 trains the model on the labelled known
classes (UNO's supervised pre-training), task 1 discovers the novel classes from unlabelled rows.

Model: encoder h; known head of L2-normalised prototypes, cosine logits z_lab (C_l); H novel heads, each an MLP
(d -> hidden -> proj) then L2-normalised prototypes, cosine logits z_unl^h (C_u); head h's logits [z_lab, z_unl^h].

* Pre-training (task 0): CE(z_lab / tau, y).
* Clustering (UNO): per view v and head h, targets: labelled rows one-hot on the known part; unlabelled rows
  Sinkhorn-Knopp(z_unl^h; eps = 0.05, 3 iterations) on the novel part (:func:`sinkhorn`). Swapped prediction:
  L_cluster = mean_{v, h} mean_i -sum_k target_{v', h, ik} log softmax([z_lab, z_unl^h]_v / tau)_ik, v' != v.
* Class-relation KD, on the unlabelled rows of every view and head (:func:`class_relation_kd`):
    p = softmax(z_lab^old / (tau T))   (the frozen pre-trained model: teacher)
    q = softmax(z_lab / (tau T))       (the current model's known head)
    w = sum_{c <= C_l} softmax([z_lab, z_unl^h] / (tau T))_c, divided by its mean over views, heads and rows;
        **not detached** (the learnable weighting); ``weighting="constant"`` sets w = 1 (the ablation)
    L_KD = mean_{v, h, i} T^2 w_{v,h,i} sum_c -p_c log q_c
* Total: L = L_cluster + alpha L_KD (alpha = 0: UNO).

The evaluation head is the one with the lowest accumulated clustering loss; novel accuracy is the Hungarian
clustering accuracy (:func:`distill.streams.metrics.clustering_accuracy`). CPU adaptation of the spec: the two views
are two random +-1 pixel shifts (the code uses 2 large + 2 small multi-crops); ``freeze_trunk`` trains only the
branch and heads during discovery.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import IGNORE_INDEX
from distill.core.registry import Provenance
from distill.streams.learners import ConvEncoder, Learner, TaskInfo, random_shift, register_learner


def sinkhorn(logits: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp soft assignments (B, K) of B rows to K clusters with equal cluster mass (UNO's form): every
    row sums to 1; the cluster totals tend to B/K as ``iters`` grows."""
    q = torch.exp((logits - logits.max()) / eps).T.double()  # (K, B)
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T.to(logits.dtype)


def relation_weights(head_logits: torch.Tensor, t: float, known: int) -> torch.Tensor:
    """w = sum_{c <= C_l} softmax(head_logits / t)_c per head and row (H, B), divided by its mean (not detached)."""
    w = F.softmax(head_logits / t, dim=2)[:, :, :known].sum(dim=2)
    return w / w.mean()


def class_relation_kd(old_known: torch.Tensor, new_known: torch.Tensor, head_logits: torch.Tensor, tau: float,
                      temperature: float, learned_weight: bool = True) -> torch.Tensor:
    """L_KD of Cr-KD. ``old_known`` (B, C_l): the teacher's known logits; ``new_known`` (B, C_l): the current
    model's; ``head_logits`` (H, B, C_l + C_u): the current concatenated logits of each head (rows: the unlabelled
    samples of all views, stacked). Returns mean_{h,i} T^2 w_hi sum_c -p_ic log q_ic."""
    t = tau * temperature
    p = F.softmax(old_known.detach() / t, dim=1)
    log_q = F.log_softmax(new_known / t, dim=1)
    soft_ce = -(p * log_q).sum(dim=1)  # (B,)
    c_l = new_known.shape[1]
    if learned_weight:
        w = relation_weights(head_logits, t, c_l)  # (H, B)
    else:
        w = torch.ones(head_logits.shape[:2], dtype=soft_ce.dtype)
    return (temperature**2 * w * soft_ce[None, :]).mean()


class NovelHead(nn.Module):
    """MLP (d -> hidden -> proj) then cosine similarity to ``clusters`` L2-normalised prototypes."""

    def __init__(self, dim: int, hidden: int, proj: int, clusters: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, proj))
        self.prototypes = nn.Parameter(torch.randn(clusters, proj) / proj**0.5)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(h), dim=1) @ F.normalize(self.prototypes, dim=1).T


@register_learner("crkd")
class CrKD(Learner):
    """See the module docstring (``alpha=0``: UNO; ``weighting="constant"``: Cr-KD with w = 1)."""

    provenance = Provenance("Class-relation Knowledge Distillation for Novel Class Discovery", 2023, "2307.09158",
                            "https://github.com/kleinzcy/Cr-KD-NCD", "ICCV")

    def __init__(self, num_classes: int, channels: int, width: int = 32, feature_dim: int = 64, heads: int = 4,
                 hidden: int = 128, proj: int = 32, tau: float = 0.1, temperature: float = 4.0, alpha: float = 0.1,
                 weighting: Literal["learned", "constant"] = "learned", sinkhorn_eps: float = 0.05,
                 sinkhorn_iters: int = 3, freeze_trunk: bool = True) -> None:
        super().__init__(num_classes, channels)
        if weighting not in ("learned", "constant"):
            raise ValueError(f"weighting must be 'learned' or 'constant', got {weighting!r}")
        self.encoder = ConvEncoder(channels, width, feature_dim)
        self.known_prototypes = nn.Parameter(torch.zeros(0, feature_dim))
        self.novel_heads = nn.ModuleList()
        self.teacher: nn.ModuleDict | None = None
        self.n_heads, self.hidden, self.proj, self.feature_dim = heads, hidden, proj, feature_dim
        self.tau, self.temperature, self.alpha, self.weighting = tau, temperature, alpha, weighting
        self.sinkhorn_eps, self.sinkhorn_iters, self.freeze_trunk = sinkhorn_eps, sinkhorn_iters, freeze_trunk
        self.known: list[int] = []
        self.register_buffer("head_loss", torch.zeros(heads))

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        if task.index == 0:
            self.known = list(task.new)
            self.known_prototypes = nn.Parameter(torch.randn(len(self.known), self.feature_dim) * 0.1)
            return
        if task.index > 1:
            raise ValueError("crkd: a novel-class stream has two tasks (known, then novel)")
        self.teacher = nn.ModuleDict({"encoder": copy.deepcopy(self.encoder)}).requires_grad_(False)
        self.register_buffer("teacher_prototypes", self.known_prototypes.detach().clone())
        self.novel_heads = nn.ModuleList(NovelHead(self.feature_dim, self.hidden, self.proj, len(task.new))
                                         for _ in range(self.n_heads))
        if self.freeze_trunk:
            self.encoder.trunk.requires_grad_(False)

    # ---- pieces ----------------------------------------------------------------------------------------------
    @staticmethod
    def cosine(h: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return F.normalize(h, dim=1) @ F.normalize(prototypes, dim=1).T

    def known_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.cosine(self.encoder(x), self.known_prototypes)

    def teacher_known(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        with torch.no_grad():
            return self.cosine(self.teacher["encoder"](x), self.teacher_prototypes)

    def rows(self, y: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.known.index(int(c)) for c in y], dtype=torch.long)

    # ---- the step --------------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        assert self.task is not None
        if self.task.index == 0:
            return {"ce": F.cross_entropy(self.known_logits(random_shift(x, generator)) / self.tau, self.rows(y))}
        lab = y != IGNORE_INDEX
        views = [random_shift(x, generator), random_shift(x, generator)]
        c_l = len(self.known)
        logits, targets = [], []
        for v in views:
            h = self.encoder(v)
            z_lab = self.cosine(h, self.known_prototypes)  # (B, C_l)
            z_unl = torch.stack([head(h) for head in self.novel_heads])  # (H, B, C_u)
            both = torch.cat([z_lab[None].expand(len(self.novel_heads), -1, -1), z_unl], dim=2)
            logits.append(both)
            with torch.no_grad():
                tgt = torch.zeros_like(both)
                if lab.any():
                    tgt[:, lab, :c_l] = F.one_hot(self.rows(y[lab]), c_l).to(both.dtype)
                for k in range(len(self.novel_heads)):
                    if (~lab).any():
                        tgt[k, ~lab, c_l:] = sinkhorn(z_unl[k, ~lab], self.sinkhorn_eps, self.sinkhorn_iters)
            targets.append(tgt)
        per_head = []
        for v in range(2):
            logp = F.log_softmax(logits[v] / self.tau, dim=2)
            per_head.append(-(targets[1 - v] * logp).sum(dim=2).mean(dim=1))  # (H,)
        per_head_t = torch.stack(per_head).mean(dim=0)
        with torch.no_grad():
            self.head_loss += per_head_t.detach()
        terms = {"cluster": per_head_t.mean()}
        if self.alpha > 0 and (~lab).any():
            old = torch.cat([self.teacher_known(v[~lab]) for v in views])
            new = torch.cat([logits[v][0, ~lab, :c_l] for v in range(2)])
            heads = torch.cat([logits[v][:, ~lab] for v in range(2)], dim=1)
            terms["kd"] = self.alpha * class_relation_kd(old, new, heads, self.tau, self.temperature,
                                                         self.weighting == "learned")
        return terms

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(x), self.num_classes), float("-inf"))
        out[:, self.known] = self.known_logits(x)
        return out

    def best_head(self) -> int:
        return int(torch.argmin(self.head_loss))

    def discover(self, x: torch.Tensor) -> torch.Tensor:
        return self.novel_heads[self.best_head()](self.encoder(x)).argmax(dim=1)
