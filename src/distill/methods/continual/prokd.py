"""ProKD: prototypical knowledge distillation across a domain shift (labelled source, unlabelled target).

Paper: ProKD: An Unsupervised Prototypical Knowledge Distillation Network for Zero-Resource Cross-Lingual Named Entity
Recognition, AAAI 2023, arXiv:2301.08855. **No official code is stored** (the authors' group BDBC-KG-NLP has other
repositories, no ProKD one): everything except the two-component structure is **reconstructed and unverified**, from
the spec (../shared/methods/text-graph.md, row 10). The losses are for any features h and class logits; the
two-stage pipeline at the bottom trains them on sentence classification (the spec's analogue of cross-lingual NER).

Notation: h features, K classes, p_T the teacher's class probabilities, tau, tau_p temperatures, m the EMA momentum.

* Prototypes (:class:`PrototypeMemory`): c^s_k = mean{h : y = k} over source rows (gold labels) and
  c^t_k = mean{h : argmax p_T = k} over target rows (pseudo-labels), each kept by EMA
  c <- m c + (1 - m) * (batch mean) (:func:`ema`); a class's first batch mean initialises it (reconstructed). Inside
  a step the blended prototype carries the gradient of its batch part (the stored copy is detached).
* Contrastive prototype alignment (:func:`proto_contrastive_align`), for the teacher:
      L_pa = -(1/K) sum_k log[ exp(cos(c^s_k, c^t_k)/tau) / sum_j exp(cos(c^s_k, c^t_j)/tau) ]
  (over the classes both memories have seen). Teacher loss: L_T = CE_src + lambda_pa * L_pa; the alignment starts
  after ``align_warmup_epochs`` of CE alone, so the target pseudo-labels come from a trained head (reconstructed).
* Student stage 1 (TSL-style KD on the target): L_KD = mean_i CE(p_T(x_i), p_S(x_i)), p_T detached (:func:`soft_ce`).
* Student stage 2 (prototypical self-training; :func:`prototype_rectified_kd`):
      w_ik = softmax_k(-||h^S_i - eta_k|| / tau_p)     (eta_k: the student's target prototypes)
      y~_i = w_i * p_T,i / sum_k(w_ik p_T,ik)           (ProDA-style rectified soft label, :func:`rectified_labels`)
      L_PT = mean over {i : max_k y~_ik > threshold} of CE(y~_i, p_S,i)   (y~ detached)
  eta is initialised by one pass over the target (student features grouped by argmax p_T) and then kept by EMA of
  the batch features grouped by argmax y~ (reconstructed: the spec leaves the grouping of eta open).
  ``stage2="uniform"`` sets w = 1 (y~ = p_T): self-training without prototypes, the ablation.

Defaults are unknown in the paper (tau, lambda_pa, m, tau_p, threshold): the recipe states the values used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.core.registry import Provenance

PROVENANCE = Provenance("ProKD: An Unsupervised Prototypical Knowledge Distillation Network for Zero-Resource "
                        "Cross-Lingual Named Entity Recognition", 2023, "2301.08855", None, "AAAI")


# ---- the maths ---------------------------------------------------------------------------------------------------
def ema(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """c <- m c + (1 - m) new."""
    return momentum * old + (1.0 - momentum) * new


def class_means(h: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means (K, D) of the rows of ``h`` (zeros for absent classes) and the counts (K,)."""
    one_hot = F.one_hot(labels, k).to(h.dtype)  # (B, K)
    counts = one_hot.sum(0)
    return (one_hot.T @ h) / counts.clamp(min=1)[:, None], counts


class PrototypeMemory(nn.Module):
    """K prototypes kept by EMA (buffers, so checkpoints carry them); ``ready[k]``: class k has been seen."""

    def __init__(self, classes: int, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("value", torch.zeros(classes, dim))
        self.register_buffer("ready", torch.zeros(classes, dtype=torch.bool))

    def blend(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The prototypes after this batch (the batch part keeps its gradient); the detached result is stored."""
        means, counts = class_means(h, labels, self.value.shape[0])
        present = counts > 0
        old, ready = self.value.clone(), self.ready.clone()
        updated = torch.where(ready[:, None], ema(old, means, self.momentum), means)
        out = torch.where(present[:, None], updated, old)
        with torch.no_grad():
            self.value.copy_(out.detach())
            self.ready |= present
        return out

    @torch.no_grad()
    def reset(self, h: torch.Tensor, labels: torch.Tensor) -> None:
        """Set the prototypes to the class means of ``h`` (classes absent from ``labels`` keep their value)."""
        means, counts = class_means(h, labels, self.value.shape[0])
        self.value[counts > 0] = means[counts > 0]
        self.ready |= counts > 0


def proto_contrastive_align(c_s: torch.Tensor, c_t: torch.Tensor, tau: float,
                            valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_pa = -(1/K) sum_k log softmax_j(cos(c^s_k, c^t_j) / tau)[k], over the classes in ``valid`` (default all)."""
    sim = F.normalize(c_s, dim=1) @ F.normalize(c_t, dim=1).T / tau  # (K, K)
    if valid is not None:
        idx = torch.nonzero(valid, as_tuple=True)[0]
        sim = sim[idx][:, idx]
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def prototype_weights(h: torch.Tensor, eta: torch.Tensor, tau_p: float) -> torch.Tensor:
    """w_ik = softmax_k(-||h_i - eta_k|| / tau_p)."""
    return F.softmax(-torch.cdist(h, eta) / tau_p, dim=1)


def rectified_labels(p_t: torch.Tensor, h: torch.Tensor, eta: torch.Tensor, tau_p: float) -> torch.Tensor:
    """y~_i = w_i * p_T,i, renormalised over k."""
    y = prototype_weights(h, eta, tau_p) * p_t
    return y / y.sum(dim=1, keepdim=True).clamp(min=1e-12)


def soft_ce(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-row CE(target, softmax(logits)) = -sum_k target_k log p_k."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


def prototype_rectified_kd(p_t: torch.Tensor, z_s: torch.Tensor, h_s: torch.Tensor | None, eta: torch.Tensor | None,
                           tau_p: float, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """L_PT and the rectified labels y~ (both targets detached). ``eta=None``: w = 1 (y~ = p_T). Rows whose
    max y~ is at most ``threshold`` are left out (a zero loss with a graph when none is left)."""
    with torch.no_grad():
        y = p_t if eta is None or h_s is None else rectified_labels(p_t, h_s, eta, tau_p)
        keep = y.max(dim=1).values > threshold
    if not keep.any():
        return z_s.sum() * 0.0, y
    return soft_ce(y[keep], z_s[keep]).mean(), y


# ---- the two-stage pipeline (sentence classification) ----------------------------------------------------------
class ProKDSettings(Strict):
    """The settings of :func:`train_teacher` and :func:`train_student` (``settings:`` of a ProKD recipe)."""

    classes: Annotated[int, Field(ge=2)] = 2
    hidden: Annotated[int, Field(gt=0)] = 256
    batch: Annotated[int, Field(gt=0)] = 64
    teacher_epochs: Annotated[int, Field(gt=0)] = 6
    teacher_lr: Annotated[float, Field(gt=0)] = 1e-3
    align_weight: Annotated[float, Field(ge=0)] = 0.5
    align_warmup_epochs: Annotated[int, Field(ge=0)] = 1
    tau: Annotated[float, Field(gt=0)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    stage1_epochs: Annotated[int, Field(ge=0)] = 4
    stage2_epochs: Annotated[int, Field(ge=0)] = 4
    student_lr: Annotated[float, Field(gt=0)] = 2e-3
    tau_p: Annotated[float, Field(gt=0)] = 1.0
    threshold: Annotated[float, Field(ge=0, lt=1)] = 0.0


class FeatureTeacher(nn.Module):
    """The trainable part of the teacher over frozen sentence features f: h = ReLU(W_1 f), z = W_2 h."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.adapter = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.adapter(f)
        return h, self.head(h)


def teacher_step(teacher: FeatureTeacher, f_src: torch.Tensor, y_src: torch.Tensor, f_tgt: torch.Tensor,
                 mem_s: PrototypeMemory | None, mem_t: PrototypeMemory | None, s: ProKDSettings,
                 align: bool) -> dict[str, torch.Tensor]:
    """L_T = CE_src (+ lambda_pa L_pa when ``align``) on one source batch and one target batch."""
    h_s, z_s = teacher(f_src)
    terms = {"ce": F.cross_entropy(z_s, y_src)}
    if align and mem_s is not None and mem_t is not None:
        h_t, z_t = teacher(f_tgt)
        c_s = mem_s.blend(h_s, y_src)
        c_t = mem_t.blend(h_t, z_t.argmax(dim=1).detach())
        valid = mem_s.ready & mem_t.ready
        if int(valid.sum()) >= 2:
            terms["align"] = s.align_weight * proto_contrastive_align(c_s, c_t, s.tau, valid)
    return terms


def train_teacher(f_src: torch.Tensor, y_src: torch.Tensor, f_tgt: torch.Tensor, s: ProKDSettings, align: bool,
                  generator: torch.Generator) -> FeatureTeacher:
    """The teacher stage on frozen features (source labelled, target unlabelled), Adam, ``teacher_epochs`` passes
    over the source with a random target batch of the same size beside each source batch."""
    teacher = FeatureTeacher(f_src.shape[1], s.hidden, s.classes)
    mem_s, mem_t = PrototypeMemory(s.classes, s.hidden, s.momentum), PrototypeMemory(s.classes, s.hidden, s.momentum)
    opt = torch.optim.Adam(teacher.parameters(), lr=s.teacher_lr)
    for epoch in range(s.teacher_epochs):
        order = torch.randperm(len(y_src), generator=generator)
        for i in range(0, len(order), s.batch):
            rows = order[i:i + s.batch]
            tgt = torch.randint(0, len(f_tgt), (len(rows),), generator=generator)
            terms = teacher_step(teacher, f_src[rows], y_src[rows], f_tgt[tgt], mem_s, mem_t, s,
                                 align and epoch >= s.align_warmup_epochs)
            opt.zero_grad(set_to_none=True)
            sum(terms.values()).backward()  # type: ignore[union-attr]
            opt.step()
    return teacher.eval()


def pooled_features(student: nn.Module) -> Callable[[], torch.Tensor]:
    """Capture the student's sentence feature h^S: the input of its ``dropout`` module (TextCNN, BiLSTM: the pooled
    vector before dropout and the classifier). Returns a function giving the last captured value."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        store["h"] = inputs[0]

    student.dropout.register_forward_pre_hook(hook)
    return lambda: store["h"]


def student_step(student: nn.Module, feature: Callable[[], torch.Tensor], ids: torch.Tensor, mask: torch.Tensor,
                 p_t: torch.Tensor, stage: Literal["kd", "proto", "uniform"], eta: PrototypeMemory | None,
                 s: ProKDSettings) -> dict[str, torch.Tensor]:
    """One student step on target rows: ``kd`` (stage 1), ``proto`` (stage 2) or ``uniform`` (stage 2, w = 1)."""
    p_t = p_t.detach()  # the teacher never receives a gradient
    z = student(ids, mask)
    if stage == "kd":
        return {"kd": soft_ce(p_t, z).mean()}
    h = feature()
    loss, y = prototype_rectified_kd(p_t, z, h.detach(), eta.value if (stage == "proto" and eta is not None)
                                     else None, s.tau_p, s.threshold)
    if stage == "proto" and eta is not None:
        with torch.no_grad():
            eta.blend(h.detach(), y.argmax(dim=1))
    return {"self_train": loss}


@torch.no_grad()
def student_eval(student: nn.Module, feature: Callable[[], torch.Tensor], ids: torch.Tensor, mask: torch.Tensor,
                 batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of the student on all rows (eval mode)."""
    student.eval()
    zs, hs = [], []
    for i in range(0, len(ids), batch):
        zs.append(student(ids[i:i + batch], mask[i:i + batch]))
        hs.append(feature())
    return torch.cat(zs), torch.cat(hs)


def train_student(student: nn.Module, ids: torch.Tensor, mask: torch.Tensor, p_t: torch.Tensor, s: ProKDSettings,
                  stage2: Literal["kd", "proto", "uniform"], generator: torch.Generator) -> nn.Module:
    """Stage 1 (``stage1_epochs`` of KD) then stage 2 (``stage2_epochs`` of ``stage2``; ``"kd"``: more KD, the
    vanilla-KD arm at the same budget) on the unlabelled target rows; Adam over the student's trainable
    parameters, one optimiser across both stages."""
    feature = pooled_features(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=s.student_lr)
    eta = PrototypeMemory(p_t.shape[1], 0, s.momentum)
    for epoch in range(s.stage1_epochs + s.stage2_epochs):
        stage = "kd" if epoch < s.stage1_epochs else stage2
        if stage == "proto" and epoch == s.stage1_epochs:  # eta from one pass: features grouped by argmax p_T
            _, h_all = student_eval(student, feature, ids, mask)
            eta = PrototypeMemory(p_t.shape[1], h_all.shape[1], s.momentum)
            eta.reset(h_all, p_t.argmax(dim=1))
        student.train()
        order = torch.randperm(len(ids), generator=generator)
        for i in range(0, len(order), s.batch):
            rows = order[i:i + s.batch]
            terms = student_step(student, feature, ids[rows], mask[rows], p_t[rows], stage, eta, s)
            opt.zero_grad(set_to_none=True)
            sum(terms.values()).backward()  # type: ignore[union-attr]
            opt.step()
    return student.eval()
