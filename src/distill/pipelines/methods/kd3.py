"""KD^3: knowledge distillation from a teacher trained on unavailable data, with a shifted, webly collected pool.

Paper: "Distribution Shift Matters for Knowledge Distillation with Webly Collected Images" (ICCV 2023, arXiv
2307.11469). No official code exists; **everything below is the spec's reconstruction** (../shared/methods/
pipelines.md row 19) from the abstract and a paper summary (three components: dynamic instance selection, a
student that shares the teacher's classifier with weighted feature alignment, MixDistribution contrast). All
formulas and weights are unverified (R). Re-implemented here.

(i) **Dynamic selection (R).** Each epoch e of E: p(x) = (1 - beta_e) p_T(x) + beta_e p_S(x), beta_e ramped
    linearly from 0 to beta_max = 0.5; keep x if max_c p_c(x) >= tau_sel (0.7), pseudo-label argmax p, weight
    w(x) = max_c p_c(x). ``selection: teacher`` is the teacher-only threshold (beta = 0), ``none`` keeps all.
(ii) **Shared classifier and alignment (R).** Student logits z_S = W_T A(h_S(x)) + b_T with the teacher's frozen
    classifier (W_T, b_T) and a linear adapter A; L_fa = sum_x w(x) ||A(h_S(x)) - h_T(x)||^2 / sum_x w(x) on the
    selected instances; L_KD = tau^2 KL(softmax(z_T/tau) || softmax(z_S/tau)) (tau = 4), batchmean.
(iii) **MixDistribution (R, MixStyle-like).** On a student feature map F (after the first block): per instance and
    channel mu, sigma (statistics detached, as MixStyle does); F~ = sigma_mix (F - mu) / sigma + mu_mix with
    mu_mix = lambda mu + (1 - lambda) mu_pi, sigma_mix likewise, pi a random permutation, lambda ~ Beta(0.1, 0.1)
    per instance. e, e~: L2-normalised pooled embeddings of the original and perturbed instance;
    L_con = -(1/B) sum_i log[exp(e_i . e~_i / tau_c) / sum_j exp(e_i . e~_j / tau_c)], tau_c = 0.1.
Total: L = L_KD + lambda_fa L_fa + lambda_con L_con (1, 1, 0.1).

Web-like pool (``web_pool``, the spec's analogue): real training images (the teacher saw them clean), each with one
random shift (grayscale, hue rotation, 3-bit posterise, Gaussian blur sigma 1.2, noise sigma 0.08, JPEG q 10,
contrast x 0.4), plus out-of-class junk: random 32 x 32 crops of the scikit-image brick, grass and gravel photos,
replicated to RGB. Pool labels are never used for training. The teacher's logits and pooled features are cached
for both flips. Student: a ConvNet-3 (the spec's ResNet-20 does not fit the shared CPU; *adaptation*), SGD with a
cosine schedule, the same number of steps for every arm, gradients clipped to norm 5 (our choice: without it the
shared-classifier student diverges at lr 0.05).
"""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.pipelines.images import ImageSource, TeacherSpec, build_cifar_model, normalise, stage_prologue
from distill.pipelines.methods.dd_eval import TeacherSourceKind, cifar_f3, test_accuracy
from distill.pipelines.stage import Artefact, StageContext, StageOutput, register_stage_kind

__all__ = ["KD3Student", "SHIFTS", "apply_shift", "beta_schedule", "feature_alignment", "info_nce",
           "mix_distribution", "select_instances", "shared_kd_loss"]

SHIFTS = ("grayscale", "hue", "posterise", "blur", "noise", "jpeg", "contrast")


# ------------------------------------------------------------------------------------------------- the web pool


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = F.pad(x.unsqueeze(0), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]


def apply_shift(img: torch.Tensor, shift: str, generator: torch.Generator) -> torch.Tensor:
    """One of :data:`SHIFTS` applied to a uint8 3 x H x W image (returns uint8)."""
    x = img.float() / 255.0
    if shift == "grayscale":
        x = _gray(x)
    elif shift == "hue":  # a rotation of the chroma plane (YIQ) by an angle in [90, 270) degrees
        th = math.radians(90 + 180 * float(torch.rand((), generator=generator)))
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        rot = torch.tensor([[1, 0, 0], [0, math.cos(th), -math.sin(th)], [0, math.sin(th), math.cos(th)]])
        m = torch.linalg.inv(yiq) @ rot @ yiq
        x = torch.einsum("ij,jhw->ihw", m, x)
    elif shift == "posterise":
        return (img & 0b11100000).to(torch.uint8)
    elif shift == "blur":
        x = _gaussian_blur(x, 1.2)
    elif shift == "noise":
        x = x + 0.08 * torch.randn(x.shape, generator=generator)
    elif shift == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=10)
        buf.seek(0)
        return torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).contiguous()
    elif shift == "contrast":
        x = _gray(x).mean() + 0.4 * (x - _gray(x).mean())
    else:
        raise ValueError(f"unknown shift {shift!r}; allowed: {', '.join(SHIFTS)}")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def texture_crops(n: int, generator: torch.Generator, names: tuple[str, ...] = ("brick", "grass", "gravel"),
                  size: int = 32) -> torch.Tensor:
    """``n`` random size x size crops of the scikit-image texture photographs, replicated to RGB (uint8)."""
    from distill.data.textures import load_textures

    tex = [torch.from_numpy(t) for t in load_textures(names).values()]
    out = []
    for i in range(n):
        t = tex[i % len(tex)]
        y0 = int(torch.randint(t.shape[0] - size + 1, (1,), generator=generator))
        x0 = int(torch.randint(t.shape[1] - size + 1, (1,), generator=generator))
        out.append((t[y0:y0 + size, x0:x0 + size] * 255).round().to(torch.uint8).expand(3, -1, -1))
    return torch.stack(out)


@torch.no_grad()
def teacher_cache(teacher: nn.Module, images: torch.Tensor, bs: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits N x 2 x K, pooled features N x 2 x D) of the teacher for the image and its horizontal flip."""
    teacher.eval()
    logits, feats = [], []
    for i in range(0, len(images), bs):
        x = normalise(images[i:i + bs])
        pair = [cifar_f3(teacher, v) for v in (x, x.flip(3))]
        logits.append(torch.stack([p[1] for p in pair], 1))
        feats.append(torch.stack([p[0].mean((2, 3)) for p in pair], 1))
    return torch.cat(logits), torch.cat(feats)


class WebPoolOptions(Strict):
    """``per_class``: shifted real images per class (the *last* ``per_class`` of each class in the training split);
    ``junk``: texture crops added."""

    data: ImageSource
    teacher: TeacherSpec = TeacherSpec()
    per_class: int = Field(800, gt=0)
    junk: int = Field(2000, ge=0)
    textures: list[str] = Field(default_factory=lambda: ["brick", "grass", "gravel"], min_length=1)
    seed: int = 0


@register_stage_kind
class WebPool(TeacherSourceKind):
    """A shifted, web-like pool with junk and the teacher's cached outputs. Table ``pool``: image (uint8), junk,
    shift (index into SHIFTS, -1 for junk), true_label (-1 for junk; for analysis only), teacher_logits and
    teacher_feat (N x 2 x ...)."""

    name = "web_pool"
    summary = "a shifted web-like pool (real images with one corruption each + texture junk), teacher outputs cached"
    Options = WebPoolOptions

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        o = options
        from distill.data.images import load_images

        torch.manual_seed(o.seed)  # "random" teacher weights are drawn from the seed
        data = load_images(ctx.resolve(o.data.path), split=o.data.train_split, cache_dir=o.data.cache_dir)
        g = torch.Generator().manual_seed(o.seed)
        idx = torch.cat([(data.labels == k).nonzero().flatten()[-o.per_class:] for k in range(data.num_classes)])
        shift = torch.randint(len(SHIFTS), (len(idx),), generator=g)
        imgs = torch.stack([apply_shift(data.images[i], SHIFTS[int(s)], g) for i, s in zip(idx, shift)])
        junk = texture_crops(o.junk, g, tuple(o.textures)) if o.junk else imgs[:0]
        images = torch.cat([imgs, junk])
        is_junk = torch.cat([torch.zeros(len(imgs), dtype=torch.int64), torch.ones(len(junk), dtype=torch.int64)])
        teacher = build_cifar_model(o.teacher, ctx, data.num_classes)
        logits, feats = teacher_cache(teacher, images)
        true = torch.cat([data.labels[idx], torch.full((len(junk),), -1, dtype=torch.int64)])
        real = is_junk == 0
        acc = float((logits[real, 0].argmax(1) == true[real]).float().mean())
        ctx.log(f"[{ctx.name}] pool {len(images)} ({int(is_junk.sum())} junk), teacher accuracy on the shifted "
                f"real part {acc:.3f}")
        return StageOutput({"pool": {"image": images, "junk": is_junk,
                                     "shift": torch.cat([shift, torch.full((len(junk),), -1, dtype=torch.int64)]),
                                     "true_label": true, "teacher_logits": logits.float(),
                                     "teacher_feat": feats.float()}},
                           {"images": len(images), "junk": int(is_junk.sum()), "shifts": list(SHIFTS),
                            "teacher_accuracy_shifted": round(acc, 4)})


# ------------------------------------------------------------------------------------------------- the method


def beta_schedule(epoch: int, epochs: int, beta_max: float = 0.5) -> float:
    """beta_e: linear from 0 (first epoch) to beta_max (last epoch)."""
    return 0.0 if epochs <= 1 else beta_max * epoch / (epochs - 1)


def select_instances(p_teacher: torch.Tensor, p_student: torch.Tensor, beta: float, tau: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(selected mask, pseudo-label, weight) of p = (1 - beta) p_T + beta p_S: selected iff max_c p_c >= tau,
    pseudo-label argmax p, weight max_c p_c."""
    p = (1 - beta) * p_teacher + beta * p_student
    w, y = p.max(-1)
    return w >= tau, y, w


def mix_distribution(f: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """F~ = sigma_mix (F - mu) / sigma + mu_mix, per instance and channel statistics over H, W (detached), mixed
    with the instances ``perm`` by ``lam`` (B,)."""
    mu = f.mean((2, 3), keepdim=True).detach()
    sig = (f.var((2, 3), keepdim=True, unbiased=False) + eps).sqrt().detach()
    lam = lam.view(-1, 1, 1, 1).to(f)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return sig_mix * (f - mu) / sig + mu_mix


def info_nce(e: torch.Tensor, e_tilde: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """-(1/B) sum_i log softmax_j(e_i . e~_j / tau)[i], e and e~ L2-normalised here."""
    e, e_tilde = F.normalize(e, dim=-1), F.normalize(e_tilde, dim=-1)
    logits = e @ e_tilde.T / tau
    return F.cross_entropy(logits, torch.arange(len(e), device=e.device))


def feature_alignment(a_h: torch.Tensor, h_t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_x w(x) ||A(h_S(x)) - h_T(x)||^2 / sum_x w(x)."""
    return (w * (a_h - h_t).pow(2).sum(-1)).sum() / w.sum().clamp_min(1e-12)


def shared_kd_loss(z_s: torch.Tensor, z_t: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """tau^2 KL(softmax(z_T/tau) || softmax(z_S/tau)), batchmean."""
    return F.kl_div(F.log_softmax(z_s / tau, -1), F.log_softmax(z_t / tau, -1), reduction="batchmean",
                    log_target=True) * tau * tau


class KD3Student(nn.Module):
    """ConvNet-3 split after its first block (where MixDistribution acts). With a ``teacher_fc`` (nn.Linear) the
    logits are W_T A(h) + b_T with W_T, b_T frozen copies (buffers) and A a linear adapter; otherwise its own fc."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128), teacher_fc: nn.Linear | None = None):
        super().__init__()
        blocks = []
        c = 3
        for w in widths:
            blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                        nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            c = w
        self.first, self.rest = blocks[0], nn.Sequential(*blocks[1:])
        self.shared = teacher_fc is not None
        if teacher_fc is not None:
            self.adapter = nn.Linear(c, teacher_fc.in_features)
            self.register_buffer("w_t", teacher_fc.weight.detach().clone())
            self.register_buffer("b_t", teacher_fc.bias.detach().clone())
        else:
            self.fc = nn.Linear(c, num_classes)

    def embed(self, f1: torch.Tensor) -> torch.Tensor:
        return self.rest(f1).mean((2, 3))

    def head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the feature compared with the teacher's: A(h) when shared, else h)."""
        if self.shared:
            a = self.adapter(h)
            return F.linear(a, self.w_t, self.b_t), a
        return self.fc(h), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(self.first(x)))[0]


class KD3Options(Strict):
    """``selection``: none | teacher (beta = 0) | joint (KD^3's ramped teacher/student mix); ``shared_classifier``
    and ``feature_align`` (ii); ``mix_distribution`` (iii). Test data: ``data`` (its test split)."""

    data: ImageSource
    selection: Literal["none", "teacher", "joint"] = "joint"
    shared_classifier: bool = True
    feature_align: bool = True
    mix_distribution: bool = True
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    tau_sel: float = Field(0.7, ge=0, le=1)
    beta_max: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(4.0, gt=0)
    lambda_fa: float = Field(1.0, ge=0)
    lambda_con: float = Field(0.1, ge=0)
    tau_con: float = Field(0.1, gt=0)
    mix_alpha: float = Field(0.1, gt=0)
    #: global gradient-norm clip (our choice, every arm): without it the shared-classifier student diverges in the
    #: first steps at SGD lr 0.05 (the frozen teacher classifier amplifies the adapter's output); 0 = off
    grad_clip: float = Field(5.0, ge=0)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=2)
    teacher: TeacherSpec = TeacherSpec()
    seed: int = 0


@torch.no_grad()
def _student_probs(model: KD3Student, x: torch.Tensor, bs: int = 500) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(x[i:i + bs]).softmax(-1) for i in range(0, len(x), bs)])
    model.train()
    return out


def kd3_train(x: torch.Tensor, t_logits: torch.Tensor, t_feat: torch.Tensor, teacher_fc: nn.Linear, num_classes: int,
              o: KD3Options, ctx: StageContext | None = None) -> tuple[KD3Student, list[dict[str, Any]]]:
    """Train the student on the pool ``x`` (normalised) from the cached teacher outputs (N x 2 x ...); the same
    number of steps per epoch (ceil(N / batch)) whatever the selection keeps. Checkpointed every epoch."""
    torch.manual_seed(o.seed)
    model = KD3Student(num_classes, tuple(o.widths), teacher_fc if o.shared_classifier else None)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=o.lr, momentum=o.momentum,
                          weight_decay=o.weight_decay)
    steps = math.ceil(len(x) / o.batch_size)
    total = steps * o.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(o.seed + 1)
    history: list[dict[str, Any]] = []
    epoch = 0
    state = ctx.load_state() if ctx is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["gen"])
        epoch, history = int(state["epoch"]), list(state["history"])
    p_t = t_logits[:, 0].softmax(-1)
    model.train()
    while epoch < o.epochs:
        if o.selection == "none":
            sel, w = torch.ones(len(x), dtype=torch.bool), torch.ones(len(x))
        else:
            beta = beta_schedule(epoch, o.epochs, o.beta_max) if o.selection == "joint" else 0.0
            p_s = _student_probs(model, x) if beta > 0 else p_t
            sel, _, w = select_instances(p_t, p_s, beta, o.tau_sel)
        chosen = sel.nonzero().flatten()
        history.append({"epoch": epoch, "selected": int(sel.sum()), "mask": sel.clone()})
        for _ in range(steps):
            if not len(chosen):
                break
            i = chosen[torch.randint(len(chosen), (o.batch_size,), generator=g)]
            flip = torch.randint(2, (len(i),), generator=g)
            xb = torch.where(flip.view(-1, 1, 1, 1).bool(), x[i].flip(3), x[i])
            zt, ht = t_logits[i, flip], t_feat[i, flip]
            f1 = model.first(xb)
            h = model.embed(f1)
            z, a = model.head(h)
            loss = shared_kd_loss(z, zt, o.temperature)
            if o.feature_align and o.shared_classifier:
                loss = loss + o.lambda_fa * feature_alignment(a, ht, w[i])
            if o.mix_distribution:
                lam = torch.from_numpy(np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g)))
                                       .beta(o.mix_alpha, o.mix_alpha, len(i))).float()
                perm = torch.randperm(len(i), generator=g)
                h_mix = model.embed(mix_distribution(f1, lam, perm))
                loss = loss + o.lambda_con * info_nce(h, h_mix, o.tau_con)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            sched.step()
        epoch += 1
        if ctx is not None:
            ctx.save_state({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "gen": g.get_state(), "epoch": epoch, "history": history})
            ctx.log(f"[{ctx.name}] epoch {epoch}/{o.epochs}: {history[-1]['selected']} selected")
    return model.eval(), history


@register_stage_kind
class KD3Train(TeacherSourceKind):
    """KD^3 (or an ablation/baseline by its flags) on a ``web_pool`` (input ``pool``); scored on the clean test
    split. Tables ``selection`` (per epoch: selected count, junk rejected) and ``accuracy``; meta: the test accuracy,
    the share of junk rejected in the last epoch and on average, the share of real images kept."""

    name = "kd3_train"
    summary = "KD^3 on a shifted web-like pool: dynamic selection, shared classifier + alignment, MixDistribution"
    Options = KD3Options
    inputs = {"pool": "a web_pool stage"}

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        pool = inputs["pool"].table("pool")
        test, _, (teacher,) = stage_prologue(ctx, options.seed, options.data, "test", [options.teacher])
        model, history = kd3_train(normalise(pool["image"]), pool["teacher_logits"], pool["teacher_feat"],
                                   teacher.linear, test.num_classes, options, ctx)
        acc = test_accuracy(model, test)
        junk = pool["junk"].bool()
        rej = [float((~h["mask"][junk]).float().mean()) if junk.any() else 0.0 for h in history]
        kept = [float(h["mask"][~junk].float().mean()) for h in history]
        ctx.log(f"[{ctx.name}] test accuracy {acc:.4f}, junk rejected (last epoch) {rej[-1]:.3f}")
        return StageOutput(
            {"selection": {"epoch": torch.arange(len(history)),
                           "selected": torch.tensor([h["selected"] for h in history]),
                           "junk_rejected": torch.tensor(rej), "real_kept": torch.tensor(kept)},
             "accuracy": {"accuracy": torch.tensor([acc])}},
            {"accuracy": round(acc, 4), "junk_rejected_last": round(rej[-1], 4),
             "junk_rejected_mean": round(sum(rej) / len(rej), 4), "real_kept_last": round(kept[-1], 4),
             "flags": {k: getattr(options, k) for k in ("selection", "shared_classifier", "feature_align",
                                                         "mix_distribution")}})
