"""INFER: dataset distillation with Universal Feature Compensators (UFCs) and static soft labels.

Paper: "Breaking Class Barriers: Efficient Dataset Distillation via Inter-Class Feature Compensator" (ICLR 2025,
arXiv 2408.06927); official code zhangxin-xd/UFC (``ufc_generation/ufc_cifar.py``, ``ufc_validation/val_static.py``),
read through the spec (../shared/methods/pipelines.md row 36) and in the repository. Re-implemented here.

* Budget: with M teachers and C classes, ipc_init = floor(ipc / (M / C + 1)); stored are C ipc_init natural images
  plus M ipc_init UFCs (<= C ipc). Natural set P_k = {x_{k,c}}_{c=1..C}: one random real image per class,
  k = 0..ipc_init-1.
* UFC u_{k,m} (3 x H x W, one per natural set and teacher m), shared by the C images of P_k:
  L = (1/C) sum_c CE(f_m(roll(x_{k,c} + u)), c) + r_bn sum_l rho_l (||var_l - var_l^run||_2 + ||mu_l - mu_l^run||_2)
  (BN statistics over the C-image batch, rho_1 = 10, rho_{l>1} = 1; roll: a random shift of 0..jitter pixels in
  both directions); Adam(u) lr 0.25, betas (0.5, 0.9), cosine schedule over the iterations; the last iterate.
  The code averages the CE over the C images (``nn.CrossEntropyLoss``), the spec writes a sum: the mean is used.
  The code clips x + u to the valid pixel range only when the image is saved (u itself is not clipped): same here.
* Training set: (M + 1) ipc_init images per class: the natural x_{k,c} and clip(x_{k,c} + u_{k,m}) for each m.
* Static labels: s(x) = mean over the M teachers of their **logits** on the un-augmented image, computed once
  (N x C floats in all). Training (``dd_evaluate`` with ``labels: static``): mixup with lambda ~ Beta(0.8, 0.8),
  target logits lambda s_i + (1 - lambda) s_j, KL(softmax(mix/T) || softmax(z_S/T)) batchmean, no T^2, T = 30
  (:func:`static_mixup`).

Adaptation (spec row 36): the teachers are CIFAR ResNet-20/32/44/56 (the akamaster weights, *not* fine-tuned on
the JPEG images as the spec asks; the ResNet-56 is the JPEG-fine-tuned one shipped with distill) instead of
ResNet-18/MobileNetV2/EfficientNet/ShuffleNet. Not implemented: the dynamic-label variant (``val_dyn.py``: the
ensemble online on each mixed batch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.pipelines.images import ImageSource, TeacherSpec, normalise, stage_prologue
from distill.pipelines.methods.dd_eval import (
    LABEL_SCHEMES,
    BNStats,
    batched,
    clamp_valid,
    real_subset,
    set_output,
    source_identity,
)
from distill.pipelines.stage import Artefact, StageContext, StageKind, StageOutput, register_stage_kind

__all__ = ["INFEROptions", "ipc_init", "mix_targets", "static_labels", "static_mixup", "ufc_loss", "ufc_optimise"]


def ipc_init(ipc: int, teachers: int, classes: int) -> int:
    """floor(ipc / (M / C + 1)) (the code's int())."""
    return int(ipc / (teachers / classes + 1))


def ufc_loss(teacher: nn.Module, images: torch.Tensor, u: torch.Tensor, labels: torch.Tensor, shift: tuple[int, int],
             r_bn: float = 1.0, first_bn: float = 10.0) -> torch.Tensor:
    """mean_c CE(f(roll(x_c + u)), c) + r_bn (first_bn r_1 + sum_{l>1} r_l) for one natural set ``images``."""
    x = torch.roll(images + u, shifts=shift, dims=(2, 3))
    with BNStats(teacher) as bn:
        logits = teacher(x)
        return F.cross_entropy(logits, labels) + r_bn * bn.loss(first_bn)


def ufc_optimise(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, iterations: int = 1000,
                 lr: float = 0.25, r_bn: float = 1.0, first_bn: float = 10.0, jitter: int = 4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One UFC u (1 x 3 x H x W) for the natural set ``images`` (normalised, one per class) and ``teacher``."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = generator or torch.Generator().manual_seed(0)
    u = torch.zeros((1, *images.shape[1:]), requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr, betas=(0.5, 0.9), eps=1e-8)
    for it in range(iterations):
        for group in opt.param_groups:  # cosine from lr to 0 over the iterations (the code's lr_cosine_policy)
            group["lr"] = 0.5 * (1 + math.cos(math.pi * it / iterations)) * lr
        shift = tuple(int(v) for v in torch.randint(jitter + 1, (2,), generator=g))
        loss = ufc_loss(teacher, images, u, labels, shift, r_bn, first_bn)  # type: ignore[arg-type]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return u.detach()


@torch.no_grad()
def static_labels(teachers: list[nn.Module], images: torch.Tensor) -> torch.Tensor:
    """The mean of the teachers' logits on the un-augmented images (N x K)."""
    return torch.stack([batched(t, images) for t in teachers]).mean(0)


def mix_targets(s_i: torch.Tensor, s_j: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda s_i + (1 - lambda) s_j (logits)."""
    return lam * s_i + (1 - lam) * s_j


def static_mixup(x: torch.Tensor, s: torch.Tensor, batch_size: int, alpha: float, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A mixup batch of the set (random flip per image, a random partner, one lambda ~ Beta(alpha, alpha) per
    batch) and its target logits from the static labels ``s``."""
    i = torch.randint(len(x), (batch_size,), generator=generator)
    j = i[torch.randperm(batch_size, generator=generator)]
    flip = torch.randint(2, (batch_size,), generator=generator).bool().view(-1, 1, 1, 1)
    lam = float(np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator))).beta(alpha, alpha))
    xi = torch.where(flip, x[i].flip(-1), x[i])
    return lam * xi + (1 - lam) * x[j], mix_targets(s[i], s[j], lam)


LABEL_SCHEMES["static"] = static_mixup  # dd_evaluate's ``labels: static``


class INFEROptions(Strict):
    """``teachers``: the M architectures (one UFC per natural set and teacher; their mean logits are the static
    labels)."""

    data: ImageSource
    teachers: list[TeacherSpec] = Field(min_length=1)
    ipc: int = Field(10, gt=0)
    iterations: int = Field(1000, ge=0)
    lr: float = Field(0.25, gt=0)
    r_bn: float = Field(1.0, ge=0)
    first_bn: float = Field(10.0, ge=0)
    jitter: int = Field(4, ge=0)
    seed: int = 0


@register_stage_kind
class INFERSynthesize(StageKind):
    """INFER: natural sets, one UFC per (natural set, teacher), the (M+1) ipc_init-per-class training set and its
    static labels. Tables ``set`` (image, label, static_logits) and ``stored`` (what is kept: the natural images
    and the UFCs, ``ufc`` rows zero for natural images); meta: ipc_init, stored images, label floats."""

    name = "infer_synthesize"
    summary = "INFER: universal feature compensators over natural sets, static ensemble soft labels"
    Options = INFEROptions

    def identity(self, ctx: StageContext, options: Any) -> dict[str, str]:
        return source_identity(ctx, options.data, options.teachers)

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        o = options
        pool, _, teachers = stage_prologue(ctx, o.seed, o.data, "train", o.teachers)
        c = pool.num_classes
        m = len(o.teachers)
        n_init = ipc_init(o.ipc, m, c)
        if n_init < 1:
            raise ValueError(f"{ctx.name}: ipc {o.ipc} is too small for {m} teachers and {c} classes")
        g = torch.Generator().manual_seed(o.seed)
        pick = real_subset(pool.labels, n_init, g)  # class-major: row c*n_init + k is x_{k,c}
        natural = normalise(pool.images[pick]).view(c, n_init, *pool.images.shape[1:])
        labels = torch.arange(c)
        state = ctx.load_state() or {"ufc": []}
        ufcs: list[torch.Tensor] = list(state["ufc"])
        jobs = [(k, t) for t in range(m) for k in range(n_init)]
        for pos in range(len(ufcs), len(jobs)):
            k, t = jobs[pos]
            u = ufc_optimise(teachers[t], natural[:, k], labels, iterations=o.iterations, lr=o.lr, r_bn=o.r_bn,
                             first_bn=o.first_bn, jitter=o.jitter,
                             generator=torch.Generator().manual_seed(o.seed * 1000003 + pos))
            ufcs.append(u)
            ctx.save_state({"ufc": ufcs})
            ctx.log(f"[{ctx.name}] UFC {pos + 1}/{len(jobs)} (set {k}, teacher {t}): |u|max {float(u.abs().max()):.3f}")
        xs, ys = [], []
        for k in range(n_init):
            xs.append(natural[:, k])
            ys.append(labels)
        for pos, (k, _) in enumerate(jobs):
            xs.append(clamp_valid(natural[:, k] + ufcs[pos]))
            ys.append(labels)
        x, y = torch.cat(xs), torch.cat(ys)
        s = static_labels(teachers, x)
        stored_nat = natural.reshape(-1, *natural.shape[2:])
        meta = {"method": "infer", "ipc_init": n_init, "teachers": m,
                "stored_images": int(len(stored_nat) + len(ufcs)), "label_floats": int(s.numel()),
                "static_label_accuracy": round(float((s.argmax(1) == y).float().mean()), 4)}
        out = set_output(x, y, meta, {"static_logits": s.float()})
        out.tables["stored"] = {"natural": stored_nat, "natural_label": labels.repeat_interleave(n_init)}
        out.tables["ufc"] = {"ufc": torch.cat(ufcs) if ufcs else torch.zeros(0, *natural.shape[2:])}
        return out
