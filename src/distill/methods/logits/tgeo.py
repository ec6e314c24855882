"""TGeo-KD: a per-sample KD/CE fusion ratio predicted from the trilateral geometry of student, teacher and label,
learned by a bilevel (look-ahead) objective on a held-out validation split.

No official code is public (the authors' README names ``fusion_ratio_bilevel.py``, which is not available). This
module is a reconstruction from the paper's abstract, the ICLR reviews and a third-party review: the exact list of
relation features, the MLP size, the bilevel solver (the one-step look-ahead of Meta-Weight-Net) and every default
are ours, as :class:`TGeoKD` says in detail.

TGeo-KD (reconstruction; no official code): a learned per-sample fusion ratio alpha_i between KD and CE.

With p_s = softmax(z_s/T), p_t = softmax(z_t/T), g = onehot(y) and T̄_c the mean of p_t over the training
examples labelled c (one teacher pass before training, :meth:`teacher_pass`; kept in the buffer ``class_mean``):

    r_i     = [p_s - p_t, p_t - g, p_s - g, p_t - T̄_y, p_s - T̄_y] ⊕ their 5 Euclidean norms   (5C + 5 dims,
              computed from detached logits: no gradient reaches the student through r_i)
    alpha_i = sigmoid(f_omega(r_i)),  f_omega: (5C+5) -> hidden -> 1 with ReLU
    L(θ, ω) = (1/B) sum_i [alpha_i T^2 KL(p_t,i || p_s,i) + (1 - alpha_i) CE(z_s,i, y_i)]

The returned term (``loss``) is L with alpha detached; the run's optimiser minimises it over θ. ω is not in
that optimiser: it is the upper level of the bilevel problem min_ω CE_val(θ*(ω)), θ*(ω) = argmin_θ L(θ, ω)
(the paper's Eqs. 5-6), solved here by the one-step look-ahead of Meta-Weight-Net (Shu et al., 2019). On
every ``update_every``-th step, before the loss is returned:

    θ' = θ - inner_lr * ∇θ L(θ, ω)                   (graph kept w.r.t. ω; torch.func.functional_call)
    ω  <- Adam(ω, ∇ω CE(f(x_val; θ'), y_val), lr=meta_lr, betas=(0.9, 0.999), eps=1e-8)

and alpha is then recomputed with the new ω for the θ step (Meta-Weight-Net's order). ω, its Adam moments
and step count are buffers (so checkpoints carry them and a resumed run is bit-identical); the method has no
``nn.Parameter``. The validation batch is ``RunInfo.val_batch(step // update_every, val_batch_size)`` from the
split the config holds out with ``data.val_per_class`` (required); with ``grad_accum`` > 1 each micro-batch of
an update step updates ω. The student runs the validation batch in its
current mode (train mode: batch statistics, as Meta-Weight-Net's meta-model) on clones of its buffers, so
its BatchNorm running statistics are not touched. The look-ahead uses this method's L alone, plain SGD
without momentum or weight decay. In eval mode, or when the student logits carry no graph, ω stays as it is.

Reconstructed, not from the paper (no official code; the appendix with hyper-parameters was not available):
the relation feature list above; the MLP size (one hidden layer, ``hidden=64``, default ``nn.Linear`` init
drawn from the run's seeded RNG); the solver (Meta-Weight-Net's one-step look-ahead, since the paper cites
Franceschi et al. 2018 without solver details); and the defaults T = 4, Adam lr 1e-3 on ω, ``inner_lr=0.05``
(the method cannot read the run's lr; 0.05 is the A0 CIFAR lr), ``update_every=1``, ``val_batch_size=0``
(the run's batch size). Labels may be soft (B, C) targets (then T̄_y = g T̄); unlabelled rows are refused.
Under DDP each rank takes the look-ahead on its shard of the batch and the ω gradients are averaged across
ranks before the Adam step, so ω stays identical on every rank (a first-order match of the one-process update,
not an exact one: each rank's look-ahead θ' uses its shard's gradient).
:meth:`alpha` returns the current per-sample ratios for analysis.
No reference library implements TGeo-KD, so there is no option mapping; the look-ahead follows
Meta-Weight-Net's convention (Shu et al., NeurIPS 2019).

Paper: Less or More From Teacher: Exploiting Trilateral Geometry For Knowledge Distillation, ICLR 2024,
arXiv:2312.15112.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import IGNORE_INDEX, Batch
from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, logits_of
from distill.train.distributed import all_reduce_mean

OMEGA = ("w1", "b1", "w2", "b2")


ADAM_BETAS = (0.9, 0.999)


ADAM_EPS = 1e-8


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def label_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """g: one-hot rows for hard labels, the rows themselves for soft (B, C) targets (e.g. after mixup)."""
    if labels.is_floating_point():
        return labels.float()
    if bool((labels == IGNORE_INDEX).any()):
        raise ValueError("tgeo: every training example needs a label (the ground-truth vertex G of the triangle); "
                         "the batch has unlabelled rows (-100)")
    return F.one_hot(labels.long(), num_classes).float()


def relation_features(ps: torch.Tensor, pt: torch.Tensor, g: torch.Tensor, tbar: torch.Tensor) -> torch.Tensor:
    """r = [p_s - p_t, p_t - g, p_s - g, p_t - T̄_y, p_s - T̄_y] ⊕ their five Euclidean norms: (B, 5C + 5).

    The three edges of the triangle (S, T, G) and the two edges to the teacher's class-average vertex T̄_y
    (the paper's inter-sample relation). The list is our reconstruction; the paper's exact list is unverified."""
    edges = [ps - pt, pt - g, ps - g, pt - tbar, ps - tbar]
    norms = [torch.linalg.vector_norm(e, dim=-1, keepdim=True) for e in edges]
    return torch.cat(edges + norms, dim=-1)


def mlp_alpha(r: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """alpha = sigmoid(f_omega(r)), f_omega(r) = w2 relu(w1 r + b1) + b2: (B,)."""
    return torch.sigmoid(F.linear(F.relu(F.linear(r, w1, b1)), w2, b2)).squeeze(-1)


def per_sample_terms(zs: torch.Tensor, zt: torch.Tensor, g: torch.Tensor, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(p_t,i || p_s,i) at temperature T, CE(z_s,i, g_i) at temperature 1), each (B,)."""
    t = temperature
    zs, zt = _wide(zs), _wide(zt)
    log_ps = F.log_softmax(zs / t, dim=-1)
    pt = F.softmax(zt / t, dim=-1)
    kl = F.kl_div(log_ps, pt, reduction="none").sum(-1)
    ce = -(g.to(zs.dtype) * F.log_softmax(zs, dim=-1)).sum(-1)
    return kl, ce


def validation_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE on the validation batch, in the logits' precision (float32 at least); unlabelled rows skipped."""
    logits = _wide(logits)
    if not labels.is_floating_point() and not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels)


def fused_loss(alpha: torch.Tensor, kl: torch.Tensor, ce: torch.Tensor, temperature: float) -> torch.Tensor:
    """(1/B) sum_i [alpha_i T^2 KL_i + (1 - alpha_i) CE_i]."""
    return (alpha * (temperature * temperature) * kl + (1.0 - alpha) * ce).mean()


class _TaskCall(nn.Module):
    """``task.forward(student, batch)`` as a module, so ``torch.func.functional_call`` can swap the student's
    parameters (names ``student.<param>``). Never a submodule of the method."""

    def __init__(self, student: nn.Module, task: Any):
        super().__init__()
        self.student = student
        object.__setattr__(self, "task", task)

    def forward(self, batch: Batch) -> torch.Tensor:
        return logits_of(self.task.forward(self.student, batch))


@register_method(
    "tgeo",
    family="logits",
    paper="Less or More From Teacher: Exploiting Trilateral Geometry For Knowledge Distillation",
    year=2024,
    arxiv="2312.15112",
    venue="ICLR",
    aliases=("tgeo_kd",),
)
class TGeoKD(Method):
    """TGeo-KD (reconstruction; no official code): a learned per-sample fusion ratio alpha_i between KD and CE."""

    tasks = CLASSIFICATION_TASKS

    needs_labels = True
    wants_teacher_pass = True

    def __init__(
        self,
        temperature: float = 4.0,
        hidden: int = 64,
        meta_lr: float = 1e-3,
        inner_lr: float = 0.05,
        update_every: int = 1,
        val_batch_size: int = 0,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if meta_lr < 0 or inner_lr < 0:
            raise ValueError(f"meta_lr and inner_lr must be >= 0, got {meta_lr} and {inner_lr}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        if val_batch_size < 0:
            raise ValueError(f"val_batch_size must be >= 0 (0: the run's batch size), got {val_batch_size}")
        self.temperature = float(temperature)
        self.hidden = int(hidden)
        self.meta_lr = float(meta_lr)
        self.inner_lr = float(inner_lr)
        self.update_every = int(update_every)
        self.val_batch_size = int(val_batch_size)
        self.num_classes = 0
        # run objects, deliberately not submodules: they must never enter this method's state or parameters
        object.__setattr__(self, "_student", None)
        object.__setattr__(self, "_task", None)
        object.__setattr__(self, "_val_batch", None)
        object.__setattr__(self, "_caller", None)
        self._meta_batch = 1

    # -- building -------------------------------------------------------------------------------------------
    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if teacher is None:
            raise ValueError("method 'tgeo' needs a teacher, but none is configured")
        if info is None or info.val_batch is None:
            raise ValueError("method 'tgeo' learns its fusion ratios on a held-out validation split, but the run "
                             "has none: set data.val_per_class in the config (e.g. 10% of the training images)")
        if info.student is None or info.task is None:
            raise ValueError("method 'tgeo' needs RunInfo.student and RunInfo.task for its look-ahead step")
        object.__setattr__(self, "_student", info.student)
        object.__setattr__(self, "_task", info.task)
        object.__setattr__(self, "_val_batch", info.val_batch)
        object.__setattr__(self, "_caller", _TaskCall(info.student, info.task))
        self._meta_batch = self.val_batch_size or int(info.batch_size)
        c = int(student.logits.shape[-1])
        self.num_classes = c
        device = student.logits.device
        fc1, fc2 = nn.Linear(5 * c + 5, self.hidden), nn.Linear(self.hidden, 1)  # default init, seeded run RNG
        init = {"w1": fc1.weight, "b1": fc1.bias, "w2": fc2.weight, "b2": fc2.bias}
        for name in OMEGA:
            value = init[name].detach().to(device)
            self.register_buffer(f"omega_{name}", value.clone())
            self.register_buffer(f"adam_m_{name}", torch.zeros_like(value))
            self.register_buffer(f"adam_v_{name}", torch.zeros_like(value))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("class_mean", torch.full((c, c), 1.0 / c, device=device))

    def omega(self) -> list[torch.Tensor]:
        """The MLP's tensors [w1, b1, w2, b2] (buffers)."""
        if self.num_classes == 0:
            raise RuntimeError("TGeoKD.setup() must run before the first step (the trainer does this)")
        return [getattr(self, f"omega_{n}") for n in OMEGA]

    @torch.no_grad()
    def teacher_pass(self, outputs: Iterator[tuple[Batch, ModelOutput]]) -> None:
        """T̄_c = mean of softmax(z_t / T) over the training examples labelled c (uniform for a class with none)."""
        c = self.num_classes
        sums = torch.zeros(c, c, dtype=torch.float64)
        counts = torch.zeros(c, dtype=torch.float64)
        for batch, out in outputs:
            if batch.labels is None:
                raise ValueError("tgeo: the teacher pass needs the training labels")
            pt = F.softmax(out.logits.float() / self.temperature, dim=-1).double().cpu()
            labels = batch.labels.cpu()
            if labels.is_floating_point():
                w = labels.double()
            else:
                keep = labels != IGNORE_INDEX
                w = F.one_hot(labels[keep].long(), c).double()
                pt = pt[keep]
            sums += w.T @ pt
            counts += w.sum(0)
        table = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1e-12)[:, None], torch.full_like(sums, 1 / c))
        self.class_mean.copy_(table.to(self.class_mean))

    # -- the fusion ratio ------------------------------------------------------------------------------------
    def relations(self, zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """r_i from (detached) logits and labels: (B, 5C + 5)."""
        with torch.no_grad():
            dtype = self.omega()[0].dtype
            g = label_targets(labels, zs.shape[-1]).to(dtype)
            ps = F.softmax(zs.detach().to(dtype) / self.temperature, dim=-1)
            pt = F.softmax(zt.detach().to(dtype) / self.temperature, dim=-1)
            return relation_features(ps, pt, g, g @ self.class_mean.to(dtype))

    @torch.no_grad()
    def alpha(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The current per-sample fusion ratios alpha_i in (0, 1): (B,)."""
        return mlp_alpha(self.relations(student_logits, teacher_logits, labels), *self.omega())

    # -- the bilevel update ----------------------------------------------------------------------------------
    def lookahead_grad(self, r: torch.Tensor, kl: torch.Tensor, ce: torch.Tensor, val_batch: Batch
                       ) -> list[torch.Tensor]:
        """∇ω CE(f(x_val; θ'), y_val) with θ' = θ - inner_lr ∇θ L(θ, ω); ``kl`` and ``ce`` must carry the graph
        of the student's parameters θ (they are the per-sample terms of the current training batch)."""
        if self._student is None:
            raise RuntimeError("TGeoKD.setup() must run before the first step (the trainer does this)")
        omega = [w.detach().clone().requires_grad_(True) for w in self.omega()]
        train_loss = fused_loss(mlp_alpha(r, *omega), kl, ce, self.temperature)
        named = [(n, p) for n, p in self._student.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(train_loss, [p for _, p in named], create_graph=True, retain_graph=True,
                                    allow_unused=True)
        swapped: dict[str, torch.Tensor] = {
            f"student.{n}": p.detach() if gp is None else p.detach() - self.inner_lr * gp
            for (n, p), gp in zip(named, grads)
        }
        # clones, so a train-mode forward updates copies of BatchNorm's running statistics, not the student's
        swapped.update({f"student.{n}": b.clone() for n, b in self._student.named_buffers()})
        logits = torch.func.functional_call(self._caller, swapped, (val_batch,))
        val_loss = validation_ce(logits, val_batch.labels)
        out = torch.autograd.grad(val_loss, omega, allow_unused=True)
        return [torch.zeros_like(w) if gw is None else gw.detach() for w, gw in zip(omega, out)]

    @torch.no_grad()
    def adam_step_(self, grads: list[torch.Tensor]) -> None:
        """One Adam step on ω (torch.optim.Adam's update, no weight decay), state in buffers."""
        self.adam_step.add_(1)
        t = int(self.adam_step)
        b1, b2 = ADAM_BETAS
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        for name, g in zip(OMEGA, grads):
            w, m, v = (getattr(self, f"{k}_{name}") for k in ("omega", "adam_m", "adam_v"))
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(ADAM_EPS)
            w.addcdiv_(m, denom, value=-self.meta_lr / bc1)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'tgeo' needs a teacher, but none is configured")
        if inputs.labels is None:
            raise ValueError("method 'tgeo' needs labels, but the batch has none")
        zs, zt = inputs.student.logits, inputs.teacher.logits
        g = label_targets(inputs.labels, zs.shape[-1])
        r = self.relations(zs, zt, inputs.labels)
        kl, ce = per_sample_terms(zs, zt.detach(), g, self.temperature)
        step = int(inputs.step)
        if self.training and zs.requires_grad and step >= 0 and step % self.update_every == 0:
            with torch.enable_grad():
                val = self._val_batch(step // self.update_every, self._meta_batch)
                grads = self.lookahead_grad(r, kl, ce, val)
                for g in grads:  # under DDP: the mean over the ranks' shards, so every rank keeps the same ω
                    all_reduce_mean(g)
                self.adam_step_(grads)
        with torch.no_grad():
            alpha = mlp_alpha(r, *self.omega())
        return {"loss": fused_loss(alpha, kl, ce, self.temperature)}
