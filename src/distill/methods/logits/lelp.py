"""LELP: pseudo-subclass targets from linear projections of the teacher's embeddings (few-class distillation).

No official code is public. This is a reconstruction from the paper's abstract and third-party reviews: per-class
PCA of the teacher's final-layer embeddings after projection onto the null space of the teacher's output
weights, a random rotation of the S directions, S pseudo-subclasses per class from a tempered softmax over the
coordinates, and a student head with C * S outputs trained with one cross-entropy. The exact map from
coordinates to probabilities (steps 4-5 of :class:`LELP`) is ours.

LELP (reconstruction; no official code): distil S pseudo-subclasses per class into a C * S student head.

Teacher embedding h (tap ``teacher``, default ``pooled``) and logits t = W h + b, C classes:

1. P = I - W^T (W W^T)^+ W, the projector onto the null space of W (``null_space=False`` uses P = I). W is
   recovered from (h, t) by least squares (:func:`linear_readout`), as a method cannot read teacher weights.
2. For each class c, over the training rows of class c (``assign="labels"``: ground truth, the teacher's
   arg-max for unlabelled rows; ``"teacher"``: the teacher's arg-max): mean mu_c, the top-S principal
   directions V_c of P (h - mu_c), and U_c = V_c Q_c with Q_c a Haar-random orthogonal S x S matrix drawn
   from ``seed`` (``rotate=False``: Q_c = I).
3. (Reconstruction.) a_c(x) = U_c^T P (h(x) - mu_c) / sigma_c, sigma_c the RMS of class-c training
   coordinates (makes beta scale-free).
4. (Reconstruction.) p^T(c, s | x) = softmax(t)_c * softmax_s(a_c(x) / beta)_s: the class marginals are the
   teacher's exactly, and S = 1 is vanilla KD at T = 1.
5. Student: a linear head of the method on its feature (tap ``student``) gives v in R^{C*S} (index c*S + s);
   L = -(1/B) sum_b sum_{c,s} p^T log softmax(v)   (KL + the teacher's entropy),
   plus ``ce_weight`` * CE(u, y) with u_c = logsumexp_s v_(c,s) (alpha = 0 in the paper, our default).
6. Inference (:meth:`inference_model`): arg-max_c u_c.

Everything of steps 1-3 is fitted in :meth:`teacher_pass` on the unaugmented training set and kept in
buffers. ``targets="cached"`` also stores p^T per training example and looks it up by dataset index (the
spec's "targets by sample index"; the student's augmented view then meets the target of the clean image);
``"live"`` computes p^T from the teacher's outputs on the batch the student sees (consistent under
augmentation, no N x C x S table). Defaults S = 4, beta = 1 are our choice: the paper's values are in an
appendix we could not read (sweep S in {2, 4, 8}, beta in {0.5, 1, 2}). The student's own C-way head is
unused (no gradient) unless other methods train it; the exported student file does not contain LELP's head
(it lives in the method's state, in checkpoints).

Paper: Linear Projections of Teacher Embeddings for Few-Class Distillation, 2024, arXiv:2409.20449.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import IGNORE_INDEX, Batch
from distill.core.method import CLASSIFICATION_TASKS, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.taps import FeatureTaps
from distill.methods.logits.losses import cross_entropy


def linear_readout(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """W (C, d) with t ~ W h + b, by minimum-norm least squares on centred data, and the relative residual.

    The teacher's last layer is not visible to a method, only its embeddings h and logits t; when t is an
    affine function of h (a linear head on the tapped feature) this recovers W on the span of the data, which is
    all the null-space projection acts on.
    """
    hc = h - h.mean(0)
    tc = t - t.mean(0)
    w = (torch.linalg.pinv(hc) @ tc).T
    residual = (tc - hc @ w.T).norm() / tc.norm().clamp_min(1e-30)
    return w, float(residual)


def null_space_projector(w: torch.Tensor) -> torch.Tensor:
    """P = I - W^T (W W^T)^+ W = I - W^+ W, so that W P = 0 (the directions that do not move the logits)."""
    d = w.shape[1]
    return torch.eye(d, dtype=w.dtype, device=w.device) - torch.linalg.pinv(w) @ w


def haar_orthogonal(s: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random S x S orthogonal matrix: QR of a Gaussian matrix with the signs of diag(R) folded in."""
    q, r = torch.linalg.qr(torch.randn(s, s, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))[None, :]


def top_directions(x: torch.Tensor, s: int) -> torch.Tensor:
    """The top-s principal directions (d, s) of rows x (already centred), signs fixed so that each direction's
    largest-magnitude entry is positive."""
    evals, evecs = torch.linalg.eigh(x.T @ x)
    v = evecs[:, torch.argsort(evals, descending=True)[:s]]
    pivot = v.gather(0, v.abs().argmax(0, keepdim=True))
    return v * torch.sign(pivot).where(pivot != 0, torch.ones(()))


class SubclassInference(nn.Module):
    """The student with LELP's C * S head: returns u_c = logsumexp_s v_(c,s), so arg-max u is the predicted class
    and softmax(u) the subclass probabilities summed per class."""

    def __init__(self, student: nn.Module, method: LELP):
        super().__init__()
        self.student = student
        self.method = method
        self.taps = FeatureTaps(student, [method.student_feature])
        self.training = student.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.taps.capture() as feats:
            self.student(x)
        return self.method.class_logits(self.method.subclass_logits(feats[self.method.student_feature]))


@register_method(
    "lelp",
    family="logits",
    paper="Linear Projections of Teacher Embeddings for Few-Class Distillation",
    year=2024,
    arxiv="2409.20449",
)
class LELP(FeaturePair):
    """LELP (reconstruction; no official code): distil S pseudo-subclasses per class into a C * S student head."""

    tasks = CLASSIFICATION_TASKS

    method_name = "lelp"

    needs_labels = True
    wants_teacher_pass = True

    def __init__(
        self,
        subclasses: int = 4,
        beta: float = 1.0,
        student: str = "pooled",
        teacher: str = "pooled",
        assign: Literal["labels", "teacher"] = "labels",
        targets: Literal["cached", "live"] = "cached",
        null_space: bool = True,
        rotate: bool = True,
        ce_weight: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if subclasses < 1:
            raise ValueError(f"subclasses must be >= 1, got {subclasses}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.subclasses = int(subclasses)
        self.beta = float(beta)
        self.tap_pair(student, teacher)
        self.assign = assign
        self.targets_mode = targets
        self.null_space = null_space
        self.rotate = rotate
        self.ce_weight = float(ce_weight)
        self.seed = int(seed)
        self.head: nn.Linear | None = None
        self.num_classes = 0

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        teacher = self.setup_teacher(teacher)
        fs = student.feature(self.student_feature).flatten(1)
        ht = teacher.feature(self.teacher_feature).flatten(1)
        c, d, s = teacher.logits.shape[-1], ht.shape[1], self.subclasses
        if s > d:
            raise ValueError(f"lelp: {s} subclasses need at least {s} embedding dimensions, the teacher has {d}")
        self.num_classes = int(c)
        device = fs.device
        self.head = nn.Linear(fs.shape[1], c * s).to(device)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("teacher_weight", torch.zeros(c, d, device=device))
        self.register_buffer("projector", torch.eye(d, device=device))
        self.register_buffer("means", torch.zeros(c, d, device=device))
        self.register_buffer("directions", torch.zeros(c, d, s, device=device))
        self.register_buffer("scales", torch.ones(c, device=device))
        if self.targets_mode == "cached":
            n = info.num_train_examples if info is not None else 0
            if n <= 0:
                raise ValueError("lelp: targets='cached' needs the number of training examples (RunInfo)")
            self.register_buffer("cached_targets", torch.zeros(n, c, s, device=device))

    # -- fitting --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, h: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Fit W, P, mu_c, U_c, sigma_c (steps 1-3) on teacher embeddings h (N, d), logits t (N, C), labels (N,)."""
        if self.head is None:
            raise RuntimeError("LELP.setup() must run before fitting (the trainer does this)")
        h64, t64 = h.flatten(1).double().cpu(), t.double().cpu()
        c, s = self.num_classes, self.subclasses
        pred = t64.argmax(1)
        if self.assign == "labels" and labels is not None and not labels.is_floating_point():
            y = labels.cpu().long()
            y = torch.where(y == IGNORE_INDEX, pred, y)
        elif self.assign == "labels" and labels is not None:
            y = labels.cpu().argmax(1)
        else:
            y = pred
        w, residual = linear_readout(h64, t64)
        if self.null_space and residual > 1e-3:
            warnings.warn(f"lelp: the teacher's logits are not an affine function of feature "
                          f"{self.teacher_feature!r} (relative residual {residual:.2g}); the null-space "
                          f"projection is approximate", stacklevel=2)
        p = null_space_projector(w) if self.null_space else torch.eye(h64.shape[1], dtype=torch.float64)
        gen = torch.Generator().manual_seed(self.seed)
        means = torch.zeros(c, h64.shape[1], dtype=torch.float64)
        dirs = torch.zeros(c, h64.shape[1], s, dtype=torch.float64)
        scales = torch.ones(c, dtype=torch.float64)
        empty = []
        for k in range(c):
            q = haar_orthogonal(s, gen)  # drawn for every class, so a class's rotation does not depend on others
            rows = h64[y == k]
            if rows.shape[0] == 0:
                empty.append(k)
                continue
            means[k] = rows.mean(0)
            x = (rows - means[k]) @ p
            u = top_directions(x, s)
            if self.rotate:
                u = u @ q
            dirs[k] = u
            coords = x @ u
            rms = coords.pow(2).mean().sqrt()
            scales[k] = rms if rms > 1e-12 else 1.0
        if empty:
            warnings.warn(f"lelp: classes {empty} have no training example; their subclasses stay uniform",
                          stacklevel=2)
        dev = self.projector.device
        self.teacher_weight.copy_(w.to(dev))
        self.projector.copy_(p.to(dev))
        self.means.copy_(means.to(dev))
        self.directions.copy_(dirs.to(dev))
        self.scales.copy_(scales.to(dev))
        self.fitted.fill_(True)

    def teacher_pass(self, outputs: Iterator[tuple[Batch, ModelOutput]]) -> None:
        """Collect the teacher's embeddings, logits and the labels over the training set, fit, and (``cached``)
        store every example's subclass targets by its dataset index."""
        hs, ts, ys, idx = [], [], [], []
        for batch, out in outputs:
            hs.append(out.feature(self.teacher_feature).flatten(1).float().cpu())
            ts.append(out.logits.float().cpu())
            if batch.labels is not None:
                ys.append(batch.labels.cpu())
            if batch.indices is not None:
                idx.append(batch.indices.cpu().long())
        h, t = torch.cat(hs), torch.cat(ts)
        labels = torch.cat(ys) if len(ys) == len(hs) else None
        self.fit(h, t, labels)
        if self.targets_mode == "cached":
            if len(idx) != len(hs):
                raise ValueError("lelp: targets='cached' needs the dataset indices of the training batches")
            dev = self.cached_targets.device
            self.cached_targets[torch.cat(idx).to(dev)] = self.teacher_targets(h.to(dev), t.to(dev))

    # -- targets and student outputs ------------------------------------------------------------------------
    def coordinates(self, h: torch.Tensor) -> torch.Tensor:
        """a_c(x) = U_c^T P (h - mu_c) / sigma_c for every class: (B, C, S)."""
        g = torch.einsum("de,ces->cds", self.projector, self.directions) / self.scales[:, None, None]
        h = h.flatten(1).float()
        return torch.einsum("bd,cds->bcs", h, g) - torch.einsum("cd,cds->cs", self.means, g)[None]

    def teacher_targets(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p^T(c, s | x) = softmax(t)_c softmax_s(a_c(x) / beta)_s: (B, C, S)."""
        if not bool(self.fitted):
            raise RuntimeError("lelp: the projections are not fitted (teacher_pass runs before training)")
        a = self.coordinates(h)
        return F.softmax(t.float(), -1)[:, :, None] * F.softmax(a / self.beta, -1)

    def subclass_logits(self, features: torch.Tensor) -> torch.Tensor:
        """v, the C * S logits of the method's student head (index c * S + s)."""
        if self.head is None:
            raise RuntimeError("LELP.setup() must run before the first step (the trainer does this)")
        return self.head(features.flatten(1))

    def class_logits(self, v: torch.Tensor) -> torch.Tensor:
        """u_c = logsumexp_s v_(c,s): (B, C)."""
        return torch.logsumexp(v.float().view(v.shape[0], self.num_classes, self.subclasses), dim=-1)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'lelp' needs a teacher, but none is configured")
        v = self.subclass_logits(inputs.student.feature(self.student_feature))
        if self.targets_mode == "cached":
            if inputs.indices is None:
                raise ValueError("lelp: targets='cached' needs the dataset indices of the batch")
            if not bool(self.fitted):
                raise RuntimeError("lelp: the projections are not fitted (teacher_pass runs before training)")
            target = self.cached_targets[inputs.indices.to(self.cached_targets.device).long()]
        else:
            target = self.teacher_targets(inputs.teacher.feature(self.teacher_feature), inputs.teacher.logits)
        log_ps = F.log_softmax(v.float(), -1)
        terms = {"subclass": -(target.flatten(1) * log_ps).sum(1).mean()}
        if self.ce_weight != 0.0:
            if inputs.labels is None:
                raise ValueError("method 'lelp' needs labels for its CE term, but the batch has none")
            terms["ce"] = self.ce_weight * cross_entropy(self.class_logits(v), inputs.labels)
        return terms

    def inference_model(self, student: nn.Module) -> nn.Module:
        return SubclassInference(student, self)
