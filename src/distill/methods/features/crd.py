"""Contrastive representation distillation (CRD): an NCE objective over momentum memory banks.

Contrastive representation distillation with momentum memory banks (RepDistiller's ``CRDLoss``).

Heads v_s = l2norm(W_s f_s + b_s), v_t = l2norm(W_t f_t + b_t) (``feat_dim``-d, no eps; both trained with
the student; f = the ``student`` / ``teacher`` feature, flattened). Memory banks M_s, M_t (N x feat_dim,
N = ``info.num_train_examples``) start uniform in [-a, a], a = 1/sqrt(feat_dim/3). For the batch's dataset
indices y (``inputs.indices``, the positives) and K sampled negatives, I = [y, n_1..n_K] (B x (K+1)):

    u_s = exp(M_t[I] v_s / tau),  u_t = exp(M_s[I] v_t / tau)     (gathered rows detached)
    P_s = u_s / Z_s,  P_t = u_t / Z_t
    L = l(P_s) + l(P_t),  l(P) = -(1/B)[sum_b log(P_b0/(P_b0 + c + eps)) + sum_{b,k} log(c/(P_bk + c + eps))]

with c = K/N and eps = 1e-7 (:func:`nce_loss`). Z_s, Z_t are the official fixed normalisers: estimated once,
on the first training batch, as N * mean(u) over its B x (K+1) scores (detached), then frozen. They live
in the buffer ``z`` = [Z_s, Z_t], which holds -1 until estimated, so a checkpoint carries them and a
resumed run does not re-estimate them. After scoring, under no-grad, M_s[y] <- normalize(m M_s[y] +
(1-m) v_s) and M_t[y] likewise with v_t (score-then-update order, as in the official code). No labels.

Negatives (:func:`sample_negatives`) are drawn with the global torch RNG, which the trainer checkpoints,
so a resumed run draws the same ones. ``negatives="other_classes"`` (the default) is the official 'exact'
mode (RepDistiller/mdistiller ``CIFAR100InstanceSample``, torchdistill ``CRDDatasetWrapper``): negatives come
from other classes; the labels of all N examples are read once in a teacher pass over the training set (kept
in the buffer ``labels``). ``"other_indices"`` draws K indices uniformly among the other N-1 training
examples and needs no labels (for unlabelled transfer sets).

Mapping onto the references: ``num_negatives`` = RepDistiller ``--nce_k`` / mdistiller ``CRD.NCE.K`` /
torchdistill ``num_negative_samples`` (official 16384); ``temperature`` = ``--nce_t`` (0.07); ``momentum`` =
``--nce_m`` (0.5); ``feat_dim`` = ``--feat_dim`` (128). The official CIFAR-100 weight is 0.8 (``-b 0.8``)
with CE 1. CPU: the official K = 16384 is too costly there (the official scoring gathers B x (K+1) x
feat_dim floats per bank per step, about 0.5 GB at B = 64; here, when N <= 8 (K+1), one B x N product
replaces the gather, but the B x (K+1) scores and the sampling still scale with K), and it exceeds N - 1
on a 5,000-image subset, which forces drawing with replacement. Use ``num_negatives`` 1024-4096 on a CPU:
4096 for the CIFAR-10 demonstration (N = 5000). Indices within a batch are assumed distinct (the trainer
draws permutations); for a repeated index, which of its bank updates lands is unspecified.

Paper: Contrastive Representation Distillation, ICLR 2020, arXiv:1910.10699; code:
https://github.com/HobbitLong/RepDistiller.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.method import CLASSIFICATION_TASKS, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.train.distributed import all_gather_cat, all_reduce_mean


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 along dim 1 with no epsilon (RepDistiller's ``Normalize(2)``)."""
    return x / x.pow(2).sum(1, keepdim=True).sqrt()


class EmbedHead(nn.Module):
    """CRD's embedding head: flatten, a linear map to ``dim`` and an L2 normalisation (no eps)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.linear(x.flatten(1)))


def nce_loss(p: torch.Tensor, num_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss on normalised scores ``p`` (B, K+1), column 0 the positive, noise P_n = 1/N, c = K/N:

    l(P) = -(1/B) [ sum_b log(P_b0 / (P_b0 + c + eps)) + sum_{b, k>=1} log(c / (P_bk + c + eps)) ].
    """
    k = p.shape[1] - 1
    c = k / float(num_data)
    pos = torch.log(p[:, 0] / (p[:, 0] + c + eps))
    neg = torch.log(c / (p[:, 1:] + c + eps))
    return -(pos.sum() + neg.sum()) / p.shape[0]


def sample_negatives(anchors: torch.Tensor, num_data: int, k: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """K negative dataset indices per anchor (B, K), drawn with the global torch RNG on the CPU.

    Candidates are all indices but the anchor's own (``labels`` None) or, given a label per training example,
    the examples of other classes (an anchor with a negative label, i.e. unlabelled or unknown, only excludes
    itself). As in RepDistiller's sample loader, the K are drawn uniformly without replacement, and with
    replacement for an anchor that has fewer than K candidates.
    """
    anchors = anchors.detach().long().cpu()
    b = anchors.numel()
    if bool(((anchors < 0) | (anchors >= num_data)).any()):
        raise ValueError(f"crd: dataset indices must lie in [0, {num_data}), got {anchors.tolist()}")
    rows = torch.arange(b)
    keys = torch.rand(b, num_data)  # the K smallest keys among the candidates: a uniform K-subset
    if labels is None:
        allowed = None
        keys[rows, anchors] = 2.0
        counts = torch.full((b,), num_data - 1)
    else:
        labels = labels.detach().long().cpu()
        own = labels[anchors]
        allowed = (labels[None, :] != own[:, None]) | (own[:, None] < 0)
        allowed[rows, anchors] = False
        keys.masked_fill_(~allowed, 2.0)
        counts = allowed.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("crd: an anchor has no candidate negative (the training set has one example or one class)")
    out = torch.empty(b, k, dtype=torch.long)
    enough = counts >= k
    if bool(enough.all()):
        return keys.topk(k, dim=1, largest=False, sorted=False).indices
    if bool(enough.any()):
        out[enough] = keys[enough].topk(k, dim=1, largest=False, sorted=False).indices
    few = ~enough
    candidates = (keys[few] < 2.0) if allowed is None else allowed[few]
    out[few] = torch.multinomial(candidates.float(), k, replacement=True)
    return out


@register_method(
    "crd",
    family="features",
    paper="Contrastive Representation Distillation",
    year=2020,
    arxiv="1910.10699",
    venue="ICLR",
    repo="https://github.com/HobbitLong/RepDistiller",
)
class CRD(FeaturePair):
    """Contrastive representation distillation with momentum memory banks (RepDistiller's ``CRDLoss``)."""

    tasks = CLASSIFICATION_TASKS

    method_name = "crd"

    def __init__(
        self,
        student: str = "pooled",
        teacher: str = "pooled",
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        eps: float = 1e-7,
        negatives: Literal["other_indices", "other_classes"] = "other_classes",
    ):
        super().__init__()
        if feat_dim <= 0 or num_negatives <= 0:
            raise ValueError("crd: feat_dim and num_negatives must be positive")
        if temperature <= 0:
            raise ValueError(f"crd: temperature must be positive, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"crd: momentum must be in [0, 1), got {momentum}")
        self.tap_pair(student, teacher)
        self.feat_dim = int(feat_dim)
        self.num_negatives = int(num_negatives)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.negatives = negatives
        self.num_data = 0
        self.embed_s: EmbedHead | None = None
        self.embed_t: EmbedHead | None = None

    @property
    def wants_teacher_pass(self) -> bool:  # type: ignore[override]
        return self.negatives == "other_classes"

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        teacher = self.setup_teacher(teacher)
        if info.num_train_examples < 2:
            raise ValueError("crd: the memory bank needs at least 2 training examples")
        fs = student.feature(self.student_feature)
        ft = teacher.feature(self.teacher_feature)
        device = fs.device
        self.num_data = int(info.num_train_examples)
        self.embed_s = EmbedHead(fs[0].numel(), self.feat_dim).to(device)
        self.embed_t = EmbedHead(ft[0].numel(), self.feat_dim).to(device)
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        shape = (self.num_data, self.feat_dim)
        self.register_buffer("memory_s", (torch.rand(shape) * 2 * bound - bound).to(device))
        self.register_buffer("memory_t", (torch.rand(shape) * 2 * bound - bound).to(device))
        self.register_buffer("z", torch.full((2,), -1.0, device=device))
        if self.negatives == "other_classes":
            self.register_buffer("labels", torch.full((self.num_data,), -1, dtype=torch.long, device=device))
            self.register_buffer("labels_known", torch.zeros((), dtype=torch.bool, device=device))

    def teacher_pass(self, outputs: Iterator[tuple[Batch, ModelOutput]]) -> None:
        """Record the label of every training example (only the ``other_classes`` mode asks for this pass)."""
        for batch, _ in outputs:
            if batch.labels is None or batch.indices is None:
                raise ValueError("crd: negatives='other_classes' (the default) needs labels and indices in the "
                                 "training batches; for unlabelled data set negatives: other_indices")
            self.set_labels(batch.indices, batch.labels)

    def set_labels(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """Store the labels of training examples ``indices`` (for ``negatives="other_classes"``)."""
        if labels.is_floating_point():
            raise ValueError("crd: negatives='other_classes' needs hard labels, got soft targets")
        self.labels[indices.to(self.labels.device).long()] = labels.to(self.labels.device).long()
        self.labels_known.fill_(True)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.embed_s is None or self.embed_t is None:
            raise RuntimeError("CRD.setup() must run before the first step (the trainer does this)")
        if inputs.teacher is None:
            raise ValueError("method 'crd' needs a teacher, but none is configured")
        if inputs.indices is None:
            raise ValueError("method 'crd' needs the dataset indices of the batch (inputs.indices)")
        labels = None
        if self.negatives == "other_classes":
            if not bool(self.labels_known):
                raise RuntimeError("crd: negatives='other_classes' needs the labels of the training set, read in "
                                   "the teacher pass before training (the trainer runs it; or call set_labels)")
            labels = self.labels
        fs = inputs.student.feature(self.student_feature)
        ft = inputs.teacher.feature(self.teacher_feature).detach()
        idx = inputs.indices.to(self.memory_s.device).long()
        negatives = sample_negatives(idx, self.num_data, self.num_negatives, labels).to(idx.device)
        contrast = torch.cat([idx[:, None], negatives], dim=1)
        with torch.autocast(device_type=fs.device.type, enabled=False):  # exp(./0.07) amplifies low-precision error
            vs = self.embed_s(fs.float())
            vt = self.embed_t(ft.float())
            loss = self.contrast_loss(vs, vt, idx, contrast)
        return {"loss": loss}

    def _scores(self, bank: torch.Tensor, v: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """bank[contrast[b, j]] . v[b] (B x (K+1)), with the bank rows constant. When K+1 is not much smaller
        than N, one (B x N) product and a gather is far cheaper than gathering B x (K+1) x D rows (the official
        way); the values are the same up to float rounding. The bank is copied because it is updated in place
        before the backward pass."""
        if self.num_data <= 8 * contrast.shape[1]:
            return (v @ bank.detach().t().clone()).gather(1, contrast)
        return torch.bmm(bank[contrast].detach(), v.unsqueeze(2)).squeeze(2)

    def contrast_loss(self, vs: torch.Tensor, vt: torch.Tensor, idx: torch.Tensor,
                      contrast: torch.Tensor) -> torch.Tensor:
        """The NCE loss for embeddings ``vs``, ``vt`` (B x D, unit norm) against the bank rows ``contrast``
        (B x (K+1), column 0 = ``idx``); then the momentum update of the rows ``idx`` of both banks."""
        us = torch.exp(self._scores(self.memory_t, vs, contrast) / self.temperature)
        ut = torch.exp(self._scores(self.memory_s, vt, contrast) / self.temperature)
        with torch.no_grad():  # (under DDP: the mean over the global batch, so every rank holds the same Z)
            if self.z[0] < 0:
                self.z[0] = all_reduce_mean(us.mean().detach().clone()) * self.num_data
            if self.z[1] < 0:
                self.z[1] = all_reduce_mean(ut.mean().detach().clone()) * self.num_data
        zs, zt = float(self.z[0]), float(self.z[1])  # constants, as in the official code
        loss = nce_loss(us / zs, self.num_data, self.eps) + nce_loss(ut / zt, self.num_data, self.eps)
        with torch.no_grad():
            # under DDP every rank applies the whole global batch's update, so the banks stay identical
            idx, vs, vt = all_gather_cat(idx), all_gather_cat(vs.detach()), all_gather_cat(vt.detach())
            m = self.momentum
            self.memory_s[idx] = l2_normalize(self.memory_s[idx] * m + vs * (1 - m))
            self.memory_t[idx] = l2_normalize(self.memory_t[idx] * m + vt * (1 - m))
        return loss
