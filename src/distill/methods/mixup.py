"""MIX-KD: per-sample mixup of the batch that teacher and student both see (FMU / PMU), and the MIXSTD loss.

Three registered names, so that mixup composes with any loss:

- ``mixup``: the batch transform only (no loss term). Put it beside ``ce``/``kd``/... to distil on mixed
  batches at any temperature (e.g. ``[mixup, ce 0.1, kd 0.9 T=1]``).
- ``mixstd``: the MIXSTD loss only (per-sample standard-deviation scaling, no T^2), on whatever batch it gets.
- ``mixkd``: the paper's recipe in one entry, PMU + MIXSTD with the official defaults.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from distill.core.batch import Batch
from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.logits import cross_entropy

UNLABELED = -100

_PROVENANCE = dict(
    paper="Understanding the Role of Mixup in Knowledge Distillation: An Empirical Study",
    year=2023,
    arxiv="2211.03946",
    repo="https://github.com/hchoi71/MIX-KD",
    venue="WACV",
)


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) class indices -> (B, K) one-hot floats (an unlabelled row, -100, becomes all zeros); (B, K) float
    targets pass through unchanged."""
    if labels.is_floating_point():
        if labels.ndim != 2:
            raise ValueError(f"soft targets must be (B, K), got shape {tuple(labels.shape)}")
        return labels
    labels = labels.long()
    known = labels != UNLABELED
    out = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    out[known] = F.one_hot(labels[known], num_classes).float()
    return out


def sample_mixing(batch_size: int, generator: torch.Generator, strategy: Literal["fmu", "pmu"], beta: float,
                  partmixup: float = 0.9, pmu_sampling: Literal["with_replacement", "exact"] = "with_replacement",
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of one mixed batch: two permutations and a per-sample lambda (float64, CPU).

    lambda_i ~ Beta(beta, beta) independently per row. PMU then forces lambda = 1 (row left unmixed, only
    permuted) on floor(B * partmixup) row indices: drawn with replacement as the official ``randint`` does
    (so fewer distinct rows: the expected unmixed fraction is 1 - (1 - 1/B)^floor(B p)), or ``exact``: that
    many distinct rows. All randomness comes from ``generator``; the Beta draw uses a NumPy generator seeded
    from it (torch has no generator-driven Beta/Gamma sampler).
    """
    rp1 = torch.randperm(batch_size, generator=generator)
    rp2 = torch.randperm(batch_size, generator=generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(beta, beta, batch_size))
    if strategy == "pmu":
        k = int(batch_size * partmixup)
        if pmu_sampling == "with_replacement":
            keep = torch.randint(0, batch_size, (k,), generator=generator)
        else:
            keep = torch.randperm(batch_size, generator=generator)[:k]
        lam[keep] = 1.0
    elif strategy != "fmu":
        raise ValueError(f"unknown mixup strategy {strategy!r}; allowed: fmu, pmu")
    return rp1, rp2, lam


def mix_batch(batch: Batch, rp1: torch.Tensor, rp2: torch.Tensor, lam: torch.Tensor, num_classes: int) -> Batch:
    """x~_i = lam_i x_rp1(i) + (1 - lam_i) x_rp2(i) and the same for the one-hot (or soft) targets.

    Works for inputs of any shape (B, ...). ``indices`` follow the first permutation (the row's main source);
    the draws are kept in ``meta["mixup"]``.
    """
    x = batch.inputs
    if not isinstance(x, torch.Tensor):
        raise TypeError("mixup needs the batch inputs to be one tensor of shape (B, ...)")
    if batch.labels is None:
        raise ValueError("mixup needs labels to build the mixed targets, but the batch has none")
    device = x.device
    rp1, rp2 = rp1.to(device), rp2.to(device)
    lam_x = lam.to(device=device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    lam_x = lam_x.view(-1, *([1] * (x.ndim - 1)))
    mixed = lam_x * x[rp1] + (1 - lam_x) * x[rp2]
    y = soft_targets(batch.labels, num_classes).to(device)
    lam_y = lam.to(device=device, dtype=y.dtype)[:, None]
    targets = lam_y * y[rp1] + (1 - lam_y) * y[rp2]
    indices = batch.indices[rp1.to(batch.indices.device)] if batch.indices is not None else None
    meta = {**batch.meta, "mixup": {"lam": lam.to(device), "perm1": rp1, "perm2": rp2}}
    return Batch(inputs=mixed, labels=targets, indices=indices, meta=meta)


@register_method("mixup", family="augmentation", **_PROVENANCE)
class Mixup(Method):
    """MIX-KD's batch mixup, as a transform only (returns no loss terms).

    FMU: x~_i = lam_i x_rp1(i) + (1 - lam_i) x_rp2(i), y~_i = lam_i e_{y_rp1(i)} + (1 - lam_i) e_{y_rp2(i)},
    with two random permutations rp1, rp2 and lam_i ~ Beta(beta, beta) drawn per sample (not per batch, unlike
    Zhang et al.'s mixup, arXiv 1710.09412). PMU (partial mixup): as FMU, with lam = 1 on floor(B * partmixup)
    row indices (``pmu_sampling="with_replacement"``, the official ``randint``, leaves about 1 - e^-0.9 = 59 % of
    rows unmixed at partmixup 0.9; ``"exact"`` leaves exactly that fraction). See :func:`sample_mixing`.

    The mixed batch goes to the teacher and the student alike, and the targets become (B, K) soft labels, which
    ``ce``, ``kd`` (its CE term) and ``mixstd`` accept. Unlike the official plain-KD branch (which scored CE
    against the un-mixed, un-permuted labels), a CE beside this transform uses the mixed targets. An unlabelled
    source row (-100) contributes nothing to the target, so such a row's target sums to its labelled share.

    Official code (hchoi71/MIX-KD ``helper/loops_mixstd.py``) hard-codes 100 classes and 3x32x32 images: here K
    is the student's output width (read at set-up) and inputs may have any shape. Default strategy: ``fmu``
    (plain per-sample mixup, the transform of the "KD + FMU" arms); ``mixkd`` defaults to the official PMU.
    """

    needs_teacher = False
    needs_labels = True

    def __init__(self, strategy: Literal["fmu", "pmu"] = "fmu", beta: float = 1.0, partmixup: float = 0.9,
                 pmu_sampling: Literal["with_replacement", "exact"] = "with_replacement"):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if not 0.0 <= partmixup <= 1.0:
            raise ValueError(f"partmixup must be in [0, 1], got {partmixup}")
        self.strategy = strategy
        self.beta = float(beta)
        self.partmixup = float(partmixup)
        self.pmu_sampling = pmu_sampling
        self.num_classes: int | None = None

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        self.num_classes = int(student.logits.shape[-1])

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.num_classes is None:
            if batch.labels is not None and batch.labels.is_floating_point():
                self.num_classes = int(batch.labels.shape[-1])
            else:
                raise RuntimeError("Mixup.setup() must run before the first batch (the trainer does this)")
        rp1, rp2, lam = sample_mixing(len(batch), generator, self.strategy, self.beta, self.partmixup,
                                      self.pmu_sampling)
        return mix_batch(batch, rp1, rp2, lam, self.num_classes)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {}


def std_scaled(logits: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """z / std(z) per row, the unbiased standard deviation over the classes (gradient flows through it)."""
    z = logits.float()
    return z / z.std(dim=-1, keepdim=True).clamp_min(eps)


def mixstd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
                ce_weight: float = 0.1, kl_weight: float = 0.9) -> dict[str, torch.Tensor]:
    """{"ce": gamma * CE(z_s / sigma_s, y~), "kl": alpha * KL(softmax(z_t / sigma_t) || softmax(z_s / sigma_s))}."""
    zs = std_scaled(student_logits)
    zt = std_scaled(teacher_logits.detach())
    terms = {"kl": kl_weight * F.kl_div(F.log_softmax(zs, -1), F.softmax(zt, -1), reduction="batchmean")}
    if ce_weight != 0.0:
        if targets is None:
            raise ValueError("method 'mixstd' needs labels for its CE term, but the batch has none")
        terms["ce"] = ce_weight * cross_entropy(zs, targets)
    return terms


@register_method("mixstd", family="logits", **_PROVENANCE)
class MixSTD(Method):
    """MIXSTD loss of MIX-KD: KD with a per-sample scale instead of a temperature.

    With sigma_s, sigma_t the per-row unbiased standard deviations of the logits over the classes,

        L = gamma * (1/B) sum_i sum_c -y~_ic log softmax(z_s,i / sigma_s,i)_c
            + alpha * KL(softmax(z_t / sigma_t) || softmax(z_s / sigma_s))   (batchmean, no T^2 factor)

    (``distiller_zoo/MIXSTD.py``: gamma = ``ce_weight`` = 0.1, alpha = ``kl_weight`` = 0.9; sigma_s is not
    detached). Targets y~ are the (B, K) soft labels of a mixup transform, or hard labels (one-hot; unlabelled
    rows skipped). The loss is invariant to z -> a z + b (a > 0) for either model. The official validation also
    divides logits by sigma, which leaves the arg-max unchanged, so no inference wrapper is added. We clamp
    sigma at 1e-12 (constant logits) where the official code would divide by zero.
    """

    def __init__(self, ce_weight: float = 0.1, kl_weight: float = 0.9):
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.kl_weight = float(kl_weight)

    @property
    def needs_labels(self) -> bool:  # type: ignore[override]
        return self.ce_weight != 0.0

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'mixstd' needs a teacher, but none is configured")
        return mixstd_loss(inputs.student.logits, inputs.teacher.logits, inputs.labels, self.ce_weight,
                           self.kl_weight)


@register_method("mixkd", family="logits", aliases=("mix_kd",), **_PROVENANCE)
class MixKD(MixSTD):
    """MIX-KD's recipe: the mixup transform of :class:`Mixup` (default PMU, partmixup 0.9, Beta(1, 1), official
    with-replacement sampling) feeding the same mixed batch to teacher and student, plus the :class:`MixSTD`
    loss (gamma 0.1, alpha 0.9). Equivalent to composing ``mixup`` (strategy pmu) with ``mixstd``; do not also
    add a ``mixup`` entry, or the batch is mixed twice.
    """

    needs_labels = True

    def __init__(self, strategy: Literal["fmu", "pmu"] = "pmu", beta: float = 1.0, partmixup: float = 0.9,
                 pmu_sampling: Literal["with_replacement", "exact"] = "with_replacement", ce_weight: float = 0.1,
                 kl_weight: float = 0.9):
        super().__init__(ce_weight, kl_weight)
        self.mixer = Mixup(strategy, beta, partmixup, pmu_sampling)

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        self.mixer.setup(student, teacher, info)

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        return self.mixer.transform_batch(batch, generator)
