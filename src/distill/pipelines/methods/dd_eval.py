"""What the dataset-distillation rows (NRR-DD, INFER) share: a synthetic set's table format, the teacher's
BatchNorm-statistics matching term, a random real subset at the same images-per-class budget, and **one KD
evaluation for every set** in the way DD-Ranking recommends (the same student, augmentations, steps and teacher
soft labels for every set; the score reported beside the improvement over a random real subset of the same size).

Provenance: DD-Ranking ("DD-Ranking: Rethinking the Evaluation of Dataset Distillation", 2025; its "improvement
over random" protocol: evaluate the random real subset with the same soft-label KD as the distilled set) and the
RDED evaluation protocol (LINs-lab/RDED ``validation/main.py``: teacher soft labels on augmented batches,
KL(softmax(z_T/T) || softmax(z_S/T)) batchmean without T^2, AdamW lr 1e-3 wd 0.01, cutmix), read through the spec
(../shared/methods/pipelines.md rows 32 and 36). Re-implemented here.

A synthetic-set stage writes the table ``set``: ``image`` (N x 3 x 32 x 32, float32, normalised with the
akamaster mean/std), ``label`` (N, int64) and optionally ``static_logits`` (N x K, INFER's stored labels).

Evaluation (``dd_evaluate``), *adapted to CPU* (spec F0: where teacher and inputs are fixed, cache the teacher
once): each set image gets a fixed **augmentation bank** of V views, drawn once from the seed: view 0 the image,
view 1 its flip, views 2.. a cutmix of the (randomly flipped) image with a random partner of the set (lambda ~
Beta(1, 1), the box area fixes the label weight). The teacher's logits are computed once per bank view (FKD-style
stored soft labels, V per image) and every label scheme reads the same views:

* ``soft`` (the shared evaluation): L = KL(softmax(z_T/T) || softmax(z_S/T)) (batchmean, no T^2; T = 4);
* ``onehot``: L = CE(z_S, y_mix) with the cutmix label y_mix;
* ``dbr`` (NRR-DD): see :func:`distill.pipelines.methods.nrr_dd.dbr_loss` (two stored distances per view);
* ``static`` (INFER's own protocol): mixup (lambda ~ Beta(0.8, 0.8)) of random set pairs on the fly with a random
  flip, target logits lambda s_i + (1 - lambda) s_j from the set's ``static_logits``, KL at T = 30 (batchmean, no
  T^2); see :func:`distill.pipelines.methods.infer.static_mixup`.

The student (spec: ResNet-20) is here a ConvNet-3 (conv 3x3-BN-ReLU-maxpool, 32-64-128 channels, global average
pooling, linear), the dataset-distillation field's usual evaluation network, because a ResNet-20 trained for the
spec's 300 epochs per set does not fit the shared 2-core machine (*adaptation*). AdamW lr 1e-3 wd 0.01 with a
cosine schedule, a fixed number of steps for every set.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.pipelines.images import ImageSource, TeacherSpec, normalise, stage_prologue
from distill.pipelines.stage import (
    Artefact,
    PipelineError,
    StageContext,
    StageKind,
    StageOutput,
    file_identity,
    register_stage_kind,
)

__all__ = ["BNStats", "ConvNet", "augmentation_bank", "bn_matching", "cifar_f3", "clamp_valid", "dd_train",
           "pixel_bounds", "real_subset", "set_output", "test_accuracy"]


# ------------------------------------------------------------------------------------------------ shared parts


def pixel_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of pixel 0 and pixel 1 per channel (1 x 3 x 1 x 1 each)."""
    from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def clamp_valid(x: torch.Tensor) -> torch.Tensor:
    """``x`` (normalised) clamped so that its de-normalised pixels lie in [0, 1]."""
    lo, hi = pixel_bounds()
    return torch.maximum(torch.minimum(x, hi.to(x)), lo.to(x))


class BNStats:
    """Forward hooks on every ``BatchNorm2d`` of ``model`` recording, for the last forward pass,
    r_l = ||mu_l - mu_l^run||_2 + ||var_l - var_l^run||_2 (batch statistics of the BN input over N, H, W; biased
    variance). ``loss(first=rho_1)`` = rho_1 r_1 + sum_{l > 1} r_l. Use as a context manager."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.terms: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        mu = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mu - module.running_mean)
                          + torch.linalg.vector_norm(var - module.running_var))

    def __enter__(self) -> BNStats:
        self._handles = [m.register_forward_hook(self._hook) for m in self.model.modules()
                         if isinstance(m, nn.BatchNorm2d)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self.terms = []

    def loss(self, first: float = 1.0) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("BNStats: no BatchNorm2d layer ran")
        return first * self.terms[0] + sum(self.terms[1:], torch.zeros(()))


def bn_matching(model: nn.Module, x: torch.Tensor, first: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, BN-matching loss) of ``model`` (eval mode: running statistics are the targets) on ``x``."""
    with BNStats(model) as bn:
        logits = model(x)
        return logits, bn.loss(first)


def cifar_f3(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f3, logits) of an akamaster CIFAR ResNet: the last stage's output (N x 64 x 8 x 8) and the classifier's."""
    out = F.relu(model.bn1(model.conv1(x)))
    f3 = model.layer3(model.layer2(model.layer1(out)))
    return f3, model.linear(f3.mean((2, 3)))


def real_subset(labels: torch.Tensor, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """``ipc`` random positions per class (classes in increasing order, positions sorted within a class)."""
    out = []
    for k in labels.unique().tolist():
        members = (labels == k).nonzero().flatten()
        if len(members) < ipc:
            raise ValueError(f"class {k} has {len(members)} images, fewer than ipc={ipc}")
        out.append(members[torch.randperm(len(members), generator=generator)[:ipc]].sort().values)
    return torch.cat(out)


def set_output(images: torch.Tensor, labels: torch.Tensor, meta: dict[str, Any],
               extra: dict[str, torch.Tensor] | None = None) -> StageOutput:
    return StageOutput({"set": {"image": images.float().contiguous(), "label": labels.long(), **(extra or {})}},
                       {"images": len(labels), "ipc": round(len(labels) / max(1, int(labels.max()) + 1), 3),
                        **meta})


class SetSource(Strict):
    """The real data a synthesising stage draws from: ``data`` (pool: ``pool_per_class`` training images per class;
    null = all) and the ``teacher``."""

    data: ImageSource
    teacher: TeacherSpec = TeacherSpec()


def source_identity(ctx: StageContext, data: ImageSource, teachers: list[TeacherSpec]) -> dict[str, str]:
    out = {"data#file": file_identity(data.path, ctx.base_dir)}
    for i, t in enumerate(teachers):
        out[f"teacher{i}#file"] = t.weights if t.weights == "random" else file_identity(t.weights, ctx.base_dir)
    return out


class TeacherSourceKind(StageKind):
    """A stage kind whose options name its ``data`` and one ``teacher``: their files are its identity."""

    def identity(self, ctx: StageContext, options: Any) -> dict[str, str]:
        return source_identity(ctx, options.data, [options.teacher])


# ------------------------------------------------------------------------------------------- random real subset


class RealSubsetOptions(SetSource):
    """``static_teachers``: when given, the set also gets INFER-style static labels (their mean logits)."""

    ipc: int = Field(10, gt=0)
    static_teachers: list[TeacherSpec] = Field(default_factory=list)
    seed: int = 0


@register_stage_kind
class DDRealSubset(StageKind):
    """A random real subset, ``ipc`` images per class of the pool: the DD-Ranking reference set (and INFER's
    "natural" baseline). Table ``set`` (image, label, index into the full train split)."""

    name = "dd_real_subset"
    summary = "a random real subset at an images-per-class budget (the dataset-distillation reference)"
    Options = RealSubsetOptions

    def identity(self, ctx: StageContext, options: Any) -> dict[str, str]:
        return source_identity(ctx, options.data, options.static_teachers)

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        pool, idx, teachers = stage_prologue(ctx, options.seed, options.data, "train", options.static_teachers)
        pick = real_subset(pool.labels, options.ipc, torch.Generator().manual_seed(options.seed))
        x = normalise(pool.images[pick])
        extra = {"index": idx[pick]}
        if teachers:
            extra["static_logits"] = torch.stack([batched(t, x) for t in teachers]).mean(0).float()
        return set_output(x, pool.labels[pick], {"method": "random real"}, extra)


# --------------------------------------------------------------------------------------------- the evaluation


class ConvNet(nn.Module):
    """ConvNet-3: (conv 3x3 - BN - ReLU - maxpool 2) x len(widths), global average pooling, linear."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        self.out_dim = c

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def cutmix_box(lam: float, size: int, generator: torch.Generator) -> tuple[int, int, int, int, float]:
    """A cutmix box (y0, y1, x0, x1) of area about (1 - lam) of a size x size image and the exact kept share."""
    cut = int(size * (1 - lam) ** 0.5)
    cy, cx = (int(v) for v in torch.randint(size, (2,), generator=generator))
    y0, y1 = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    x0, x1 = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    return y0, y1, x0, x1, 1 - (y1 - y0) * (x1 - x0) / (size * size)


def augmentation_bank(images: torch.Tensor, labels: torch.Tensor, num_classes: int, views: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bank images N*V x 3 x H x W, y_mix N*V x K, base index N*V, view N*V): view 0 the image, 1 its flip,
    v >= 2 a cutmix of the (randomly flipped) image with a random partner (lambda ~ Beta(1, 1))."""
    if views < 1:
        raise ValueError("views must be >= 1")
    g = torch.Generator().manual_seed(seed)
    onehot = F.one_hot(labels, num_classes).float()
    size = images.shape[-1]
    out, ys, base, view = [], [], [], []
    for i in range(len(images)):
        for v in range(views):
            x = images[i]
            y = onehot[i]
            if v == 1 or (v >= 2 and int(torch.randint(2, (1,), generator=g))):
                x = x.flip(-1)
            if v >= 2:
                j = int(torch.randint(len(images), (1,), generator=g))
                lam = float(torch.rand((), generator=g))  # Beta(1, 1) = U(0, 1)
                y0, y1, x0, x1, kept = cutmix_box(lam, size, g)
                x = x.clone()
                x[:, y0:y1, x0:x1] = images[j][:, y0:y1, x0:x1]
                y = kept * y + (1 - kept) * onehot[j]
            out.append(x)
            ys.append(y)
            base.append(i)
            view.append(v)
    return torch.stack(out), torch.stack(ys), torch.tensor(base), torch.tensor(view)


@torch.no_grad()
def batched(model: nn.Module, x: torch.Tensor, bs: int = 250) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + bs]) for i in range(0, len(x), bs)])


def test_accuracy(model: nn.Module, test: Any) -> float:
    """Top-1 accuracy of ``model`` on the uint8 ``test`` images (normalised here)."""
    return float((batched(model, normalise(test.images)).argmax(1) == test.labels).float().mean())


def kd_soft(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL(softmax(teacher/t) || softmax(student/t)), batchmean, no t^2 (the RDED/INFER convention)."""
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True)


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy with a probability target."""
    return -(target * F.log_softmax(logits, -1)).sum(-1)


#: the methods' own label schemes, registered by their modules (no import circle): ``dbr`` -> the DBR loss
#: (student, teacher, y_org, y_mix, weight), ``static`` -> the static-label mixup batch (x, s, batch, alpha, gen)
LABEL_SCHEMES: dict[str, Any] = {}


class EvalOptions(Strict):
    """``labels``: the label scheme (``soft`` is the shared DD-Ranking-style evaluation). ``test_per_class``: test
    images per class (the same for every set). ``views``: the augmentation bank per image."""

    labels: Literal["soft", "onehot", "dbr", "static"] = "soft"
    data: ImageSource
    teacher: TeacherSpec = TeacherSpec()
    steps: int = Field(300, gt=0)
    batch_size: int = Field(50, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(4.0, gt=0)
    static_temperature: float = Field(30.0, gt=0)
    mixup_alpha: float = Field(0.8, gt=0)
    dbr_weight: float = Field(1.0, ge=0)
    views: int = Field(8, ge=2)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    seed: int = 0
    checkpoint_every: int = Field(100, gt=0)


def dd_train(x: torch.Tensor, y: torch.Tensor, num_classes: int, o: EvalOptions, teacher: nn.Module | None,
             static_logits: torch.Tensor | None = None, ctx: StageContext | None = None) -> nn.Module:
    """Train a fresh ConvNet on the set (``x`` normalised, ``y``) for ``o.steps`` steps with the label scheme
    ``o.labels``; checkpointed through ``ctx`` every ``o.checkpoint_every`` steps (resume gives the same model)."""
    for scheme in ("dbr", "static"):
        if o.labels == scheme and scheme not in LABEL_SCHEMES:
            raise PipelineError(f"label scheme {scheme!r} is registered by its method's module: import "
                                "distill.pipelines.kinds")
    dbr_loss, static_mixup = LABEL_SCHEMES.get("dbr"), LABEL_SCHEMES.get("static")
    torch.manual_seed(o.seed)
    model = ConvNet(num_classes, tuple(o.widths))
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + torch.cos(torch.tensor(
        torch.pi * s / o.steps)).item()))
    bank_x = bank_y = bank_t = bank_base = None
    if o.labels != "static":
        bank_x, bank_y, bank_base, _ = augmentation_bank(x, y, num_classes, o.views, o.seed)
        if teacher is None:
            raise PipelineError("dd_train: the label scheme needs the teacher")
        bank_t = batched(teacher, bank_x)
    elif static_logits is None:
        raise PipelineError("labels 'static' needs the set's static_logits column (INFER); this set has none")
    step, g = 0, torch.Generator().manual_seed(o.seed + 1)
    state = ctx.load_state() if ctx is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["gen"])
        step = int(state["step"])
        if ctx is not None:
            ctx.log(f"[{ctx.name}] resuming at step {step}")
    model.train()
    while step < o.steps:
        if o.labels == "static":
            xb, target = static_mixup(x, static_logits, o.batch_size, o.mixup_alpha, g)
            loss = kd_soft(model(xb), target, o.static_temperature)
        else:
            pick = torch.randint(len(bank_x), (o.batch_size,), generator=g)
            z = model(bank_x[pick])
            if o.labels == "soft":
                loss = kd_soft(z, bank_t[pick], o.temperature)
            elif o.labels == "onehot":
                loss = soft_ce(z, bank_y[pick]).mean()
            else:
                y_org = F.one_hot(y[bank_base[pick]], num_classes).float()
                loss = dbr_loss(z, bank_t[pick], y_org, bank_y[pick], o.dbr_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if ctx is not None and (step % o.checkpoint_every == 0 and step < o.steps):
            ctx.save_state({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "gen": g.get_state(), "step": step})
    return model.eval()


@register_stage_kind
class DDEvaluate(TeacherSourceKind):
    """Train the evaluation student on a synthetic set (input ``set``: a stage with table ``set``) with one label
    scheme and score it on the test images. Table ``accuracy`` (one row); meta: accuracy, the set's size and the
    label floats the scheme stores (soft: views x N x K; dbr: views x N x 2; static: N x K; onehot: 0)."""

    name = "dd_evaluate"
    summary = "the shared KD evaluation of a synthetic set (DD-Ranking style), or its method's label scheme"
    Options = EvalOptions
    inputs = {"set": "a stage with a table 'set' (image, label[, static_logits])"}

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        cols = inputs["set"].table("set")
        x, y = cols["image"].float(), cols["label"].long()
        test, _, teachers = stage_prologue(ctx, options.seed, options.data, "test",
                                           [] if options.labels == "static" else [options.teacher])
        k = test.num_classes
        model = dd_train(x, y, k, options, teachers[0] if teachers else None, cols.get("static_logits"), ctx)
        acc = test_accuracy(model, test)
        floats = {"soft": options.views * len(y) * k, "dbr": options.views * len(y) * 2,
                  "static": len(y) * k, "onehot": 0}[options.labels]
        ctx.log(f"[{ctx.name}] {options.labels} labels on {len(y)} images: test accuracy {acc:.4f}")
        return StageOutput({"accuracy": {"accuracy": torch.tensor([acc])}},
                           {"accuracy": round(acc, 4), "labels": options.labels, "set_images": len(y),
                            "label_floats": floats, "test_images": len(test), "set_stage": inputs["set"].stage,
                            "set_meta": inputs["set"].meta})
