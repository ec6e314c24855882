"""Relational losses: the student matches relations between the examples of a batch rather than the teacher's
features themselves (SP Gram matrices, CC kernel correlations, RKD distances and angles, PKT affinities)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher


def _rows(x: torch.Tensor) -> torch.Tensor:
    """One float32 row per example: (B, ...) -> (B, D)."""
    return x.float().flatten(1)


# -- SP -------------------------------------------------------------------------------------------------------
def similarity_matrix(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """SP's G~: the batch Gram matrix Z Z^T of the flattened activations, each row scaled to unit L2 norm."""
    z = x.flatten(1)
    return F.normalize(z @ z.t(), p=2.0, dim=1, eps=eps)


def sp_loss(fs: torch.Tensor, ft: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """||G~_t - G~_s||_F^2, divided by B^2 for ``reduction="batchmean"``."""
    sq = (similarity_matrix(ft) - similarity_matrix(fs)).pow(2).sum()
    return sq / fs.shape[0] ** 2 if reduction == "batchmean" else sq


@register_method(
    "sp",
    family="relations",
    paper="Similarity-Preserving Knowledge Distillation",
    year=2019,
    arxiv="1907.09682",
    venue="ICCV",
    aliases=("similarity_preserving", "spkd"),
)
class SimilarityPreserving(Method):
    """Similarity-preserving KD: the student keeps the teacher's pairwise similarities within a batch.

    For each feature pair j, Z = activations flattened to (B, D) (D may differ between student and teacher),
    G = Z Z^T and G~ = G with each row L2-normalised (eps 1e-12). Then
    L = sum_j w_j * ||G~_t,j - G~_s,j||_F^2 / B^2 (``reduction="batchmean"``; ``"sum"`` drops the 1/B^2).
    The teacher Gram is a constant. No parameters.

    Follows torchdistill ``SPKDLoss`` (``reduction='batchmean'`` there is ours), which equals RepDistiller's and
    mdistiller's ``Similarity`` (squared sum / bsz^2, verified by the paper's author). CIFAR default: one tap
    on the last stage output ``f3`` (RepDistiller ``feat[-2]``), method weight 3000 with CE weight 1.
    """

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        reduction: Literal["batchmean", "sum"] = "batchmean",
    ):
        super().__init__()
        self.student_features = list(student or ["f3"])
        self.teacher_features = list(teacher or self.student_features)
        if len(self.student_features) != len(self.teacher_features):
            raise ValueError("sp: student and teacher feature lists must have the same length")
        self.pair_weights = list(weights or [1.0] * len(self.student_features))
        if len(self.pair_weights) != len(self.student_features):
            raise ValueError("sp: one weight per feature pair is needed")
        self.reduction = reduction

    def student_taps(self) -> list[str]:
        return self.student_features

    def teacher_taps(self) -> list[str]:
        return self.teacher_features

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "sp")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for s_name, t_name, w in zip(self.student_features, self.teacher_features, self.pair_weights):
            fs = _rows(inputs.student.feature(s_name))
            ft = _rows(teacher.feature(t_name)).detach()
            total = total + w * sp_loss(fs, ft, self.reduction)
        return {"loss": total}


# -- CC -------------------------------------------------------------------------------------------------------
def correlation_matrix(f: torch.Tensor, kernel: str = "gaussian", gamma: float = 0.4, max_p: int = 2) -> torch.Tensor:
    """CC's correlation matrix of embeddings f (B, d).

    ``bilinear``: C = F F^T. ``gaussian``: C_ij = e^{-2 gamma} sum_{p=0}^{P} (2 gamma)^p / p! (f_i . f_j)^p, the
    order-P Taylor form of exp(-gamma ||f_i - f_j||^2), which it equals (as P grows) when the f are unit-norm.
    """
    k = f @ f.t()
    if kernel == "bilinear":
        return k
    if kernel != "gaussian":
        raise ValueError(f"cc: unknown kernel {kernel!r}")
    term = torch.ones_like(k)
    total = torch.ones_like(k)
    for p in range(1, max_p + 1):
        term = term * (2.0 * gamma) * k / p  # (2 gamma k)^p / p!, built up one factor at a time
        total = total + term
    return math.exp(-2.0 * gamma) * total


def cc_congruence(cs: torch.Tensor, ct: torch.Tensor, reduction: str = "batchmean", squared: bool = False
                  ) -> torch.Tensor:
    """||C_s - C_t||_F (squared if ``squared``), divided by B^2 for ``reduction="batchmean"``."""
    diff = cs - ct
    dist = diff.pow(2).sum() if squared else torch.linalg.vector_norm(diff)
    return dist / cs.shape[0] ** 2 if reduction == "batchmean" else dist


def cc_consecutive(es: torch.Tensor, et: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ``Correlation``: with delta = |e_s - e_t|, the mean over i < B of sum_d delta_i,d delta_i+1,d."""
    delta = (es - et).abs()
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_method(
    "cc",
    family="relations",
    paper="Correlation Congruence for Knowledge Distillation",
    year=2019,
    arxiv="1904.01802",
    venue="ICCV",
    aliases=("cckd", "correlation_congruence"),
)
class CorrelationCongruence(Method):
    """Correlation congruence: match the kernel correlations between the batch's embeddings.

    f_s = h_s(flatten(feature_s)), f_t = h_t(flatten(feature_t)) with two linear heads to ``out_dim`` (128)
    built at set-up and trained with the student. The teacher's head is trainable; the teacher backbone is not
    (its feature is a constant). ``normalize=True`` L2-normalises f first (default False, as in both libraries).

    ``variant="torchdistill"`` (default; ``CCKDLoss`` + ``Linear4CCKD``): C = :func:`correlation_matrix` with
    ``kernel`` ``gaussian`` (``gamma`` 0.4, ``max_p`` P = 2; torchdistill's ``kernel_config={'type', 'gamma',
    'max_p'}``) or ``bilinear``, and L = ||C_s - C_t||_F / B^2 (``reduction="batchmean"``; ``"sum"`` drops the
    1/B^2). torchdistill uses the unsquared Frobenius norm (``torch.dist``); ``squared=True`` gives the paper's
    (1/B^2) ||C_s - C_t||_F^2. torchdistill's ImageNet sample: 128-d heads on the pooled feature, weight 0.003,
    plus a bare KL (``kd`` with ``torchdistill_compat``, temperature 1).

    ``variant="repdistiller"``: the loss of RepDistiller's ``Correlation`` (code sent by the authors, different
    from the paper): delta = |f_s - f_t| and L = (1/(B-1)) sum_{i<B} sum_d delta_{i,d} delta_{i+1,d};
    ``kernel``, ``gamma``, ``max_p``, ``reduction`` and ``squared`` are then unused. RepDistiller's CIFAR row:
    tap ``pooled``, ``out_dim`` 128, method weight 0.02 with CE weight 1.
    """

    def __init__(
        self,
        student: str = "pooled",
        teacher: str = "pooled",
        out_dim: int = 128,
        kernel: Literal["gaussian", "bilinear"] = "gaussian",
        gamma: float = 0.4,
        max_p: int = 2,
        reduction: Literal["batchmean", "sum"] = "batchmean",
        squared: bool = False,
        normalize: bool = False,
        variant: Literal["torchdistill", "repdistiller"] = "torchdistill",
    ):
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"cc: out_dim must be positive, got {out_dim}")
        if max_p < 0:
            raise ValueError(f"cc: max_p must be >= 0, got {max_p}")
        self.student_feature = student
        self.teacher_feature = teacher
        self.out_dim = int(out_dim)
        self.kernel = kernel
        self.gamma = float(gamma)
        self.max_p = int(max_p)
        self.reduction = reduction
        self.squared = squared
        self.normalize = normalize
        self.variant = variant
        self.student_head: nn.Linear | None = None
        self.teacher_head: nn.Linear | None = None

    def student_taps(self) -> list[str]:
        return [self.student_feature]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_feature]

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if teacher is None:
            raise ValueError("method 'cc' needs a teacher, but none is configured")
        s = student.feature(self.student_feature)
        t = teacher.feature(self.teacher_feature)
        self.student_head = nn.Linear(s[0].numel(), self.out_dim).to(s.device)
        self.teacher_head = nn.Linear(t[0].numel(), self.out_dim).to(s.device)

    def embed(self, head: nn.Linear, feature: torch.Tensor) -> torch.Tensor:
        f = head(_rows(feature))
        return F.normalize(f, dim=1) if self.normalize else f

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.student_head is None or self.teacher_head is None:
            raise RuntimeError("CorrelationCongruence.setup() must run before the first step (the trainer does this)")
        fs = self.embed(self.student_head, inputs.student.feature(self.student_feature))
        # the teacher feature is a constant; only the teacher-side head learns from this term
        ft = self.embed(self.teacher_head, require_teacher(inputs, "cc").feature(self.teacher_feature).detach())
        if self.variant == "repdistiller":
            return {"loss": cc_consecutive(fs, ft)}
        cs = correlation_matrix(fs, self.kernel, self.gamma, self.max_p)
        ct = correlation_matrix(ft, self.kernel, self.gamma, self.max_p)
        return {"loss": cc_congruence(cs, ct, self.reduction, self.squared)}


# -- RKD ------------------------------------------------------------------------------------------------------
def rkd_distances(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of x, via the Gram expansion clamped at ``eps`` before the square
    root; the diagonal is set to 0 (value and gradient)."""
    sq = x.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(eps)
    if not squared:
        d = d.sqrt()
    off_diagonal = 1.0 - torch.eye(x.shape[0], dtype=d.dtype, device=d.device)
    return d * off_diagonal


def rkd_normalized_distances(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """:func:`rkd_distances` divided by the mean of its positive entries (left as is when there are none, B = 1)."""
    d = rkd_distances(x, squared, eps)
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def rkd_angles(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """a[i, j, k] = e_ij . e_ik with e_ij = (x_j - x_i) / ||x_j - x_i|| (the zero vector when x_j = x_i)."""
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2.0, dim=2, eps=eps)  # e[i, j] = unit(x_j - x_i)
    return e @ e.transpose(1, 2)


@register_method(
    "rkd",
    family="relations",
    paper="Relational Knowledge Distillation",
    year=2019,
    arxiv="1904.05068",
    venue="CVPR",
    repo="https://github.com/lenscloth/RKD",
    aliases=("relational_kd",),
)
class RelationalKD(Method):
    """Relational KD: transfer the distances and angles among the batch's embeddings.

    x = feature flattened to (B, D). Distance term: d = :func:`rkd_distances` (unsquared by default; eps 1e-12
    clamp before the root, zero diagonal) divided by the mean of its positive entries, and
    L_D = SmoothL1_beta=1(d_s, d_t) averaged over all B^2 entries. Angle term: a = :func:`rkd_angles`, and
    L_A = SmoothL1(a_s, a_t) averaged over all B^3 entries. Returns ``{"distance": w_D L_D, "angle": w_A L_A}``;
    a term whose weight is 0 is left out (torchdistill returns 0 for it). Teacher relations carry no gradient.

    Defaults follow RepDistiller's ``RKDLoss`` (``w_d=25, w_a=50``) and mdistiller's ``cfg.RKD`` (``PDIST.SQUARED
    = False``), on the penultimate embedding ``pooled`` (RepDistiller ``feat[-1]``), method weight 1 with CE 1.
    torchdistill ``RKDLoss(dist_factor, angle_factor, reduction)`` is ``distance_weight``, ``angle_weight``,
    ``reduction`` (passed to SmoothL1); its ImageNet sample uses 1.0 / 2.0 (the paper's metric-learning
    values) on flattened ``layer4``.
    """

    def __init__(
        self,
        student: str = "pooled",
        teacher: str = "pooled",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        squared: bool = False,
        reduction: Literal["mean", "sum"] = "mean",
    ):
        super().__init__()
        if distance_weight == 0 and angle_weight == 0:
            raise ValueError("rkd: distance_weight and angle_weight are both 0, so the method has no term")
        self.student_feature = student
        self.teacher_feature = teacher
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.squared = squared
        self.reduction = reduction

    def student_taps(self) -> list[str]:
        return [self.student_feature]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_feature]

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        xs = _rows(inputs.student.feature(self.student_feature))
        xt = _rows(require_teacher(inputs, "rkd").feature(self.teacher_feature))
        terms: dict[str, torch.Tensor] = {}
        if self.distance_weight != 0:
            with torch.no_grad():
                dt = rkd_normalized_distances(xt, self.squared)
            ds = rkd_normalized_distances(xs, self.squared)
            terms["distance"] = self.distance_weight * F.smooth_l1_loss(ds, dt, reduction=self.reduction, beta=1.0)
        if self.angle_weight != 0:
            with torch.no_grad():
                at = rkd_angles(xt)
            as_ = rkd_angles(xs)
            terms["angle"] = self.angle_weight * F.smooth_l1_loss(as_, at, reduction=self.reduction, beta=1.0)
        return terms


# -- PKT ------------------------------------------------------------------------------------------------------
def pkt_probabilities(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT's conditional probabilities: x^ = x / (||x|| + eps) (NaN -> 0), K = (x^ x^^T + 1) / 2 in [0, 1], and
    P = K / rowsum(K), the diagonal included."""
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


def pkt_loss(xs: torch.Tensor, xt: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mean over all (i, j) of P_t,ij log((P_t,ij + eps) / (P_s,ij + eps))."""
    ps, pt = pkt_probabilities(xs, eps), pkt_probabilities(xt, eps)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


@register_method(
    "pkt",
    family="relations",
    paper="Learning Deep Representations with Probabilistic Knowledge Transfer",
    year=2018,
    arxiv="1803.10837",
    venue="ECCV",
    repo="https://github.com/passalis/probabilistic_kt",
    aliases=("probabilistic_kt",),
)
class ProbabilisticKT(Method):
    """Probabilistic knowledge transfer: match the batch's cosine-affinity distributions.

    x = feature flattened to (B, D) (D may differ between student and teacher); P = :func:`pkt_probabilities`
    (cosine similarities shifted to [0, 1] by (K + 1) / 2, rows normalised to sum 1, diagonal kept) and
    L = (1/B^2) sum_{i,j} P_t,ij log((P_t,ij + eps) / (P_s,ij + eps)), a mean over all B^2 entries (not a
    per-row sum), eps = 1e-7. No parameters.

    Follows the official code as copied by torchdistill ``PKTLoss(eps=1e-7)``, RepDistiller ``PKT`` and
    mdistiller (all identical). Default tap: the penultimate embedding ``pooled`` (torchdistill: input of
    ``fc``); CIFAR method weight 30000 with CE weight 1.
    """

    def __init__(self, student: str = "pooled", teacher: str = "pooled", eps: float = 1e-7):
        super().__init__()
        if eps < 0:
            raise ValueError(f"pkt: eps must be >= 0, got {eps}")
        self.student_feature = student
        self.teacher_feature = teacher
        self.eps = float(eps)

    def student_taps(self) -> list[str]:
        return [self.student_feature]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_feature]

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        xs = _rows(inputs.student.feature(self.student_feature))
        xt = _rows(require_teacher(inputs, "pkt").feature(self.teacher_feature)).detach()
        return {"loss": pkt_loss(xs, xt, self.eps)}
