"""ProC-KD: prototype-guided cross-task distillation from a frozen teacher trained on another label space.

Paper: Prototype-guided Cross-task Knowledge Distillation for Large-scale Models, 2022, arXiv:2212.13180 (journal
version FITEE 26(6):912-929, 2025); code: Daniel00008/ProC-KD, a MindSpore port (``models.py``: the prototype and
augmentation modules; ``inference.py``: accuracy from the augmented head), read through the spec
(../shared/methods/text-graph.md, row 21). The official training loop only applies CE to the student (its teacher
branch is disabled), so **the loss below is reconstructed (unverified)**; the modules follow ``models.py``.

The teacher's label space differs from the student's: teacher logits are never used. The student learns K
prototypes c_k in R^C of local parts from the teacher's intermediate tokens, and an augmentation module that
enriches token features with them.

* Teacher tokens T (B x N x D_T): the teacher's stage outputs pooled to the student's token grid and concatenated
  along channels (a CIFAR ResNet-56: 16 + 32 + 64 = 112 channels on 8 x 8 = 64 tokens).
* Prototype module (training only; :class:`PrototypeModule`): X = ReLU(Linear_{D_T -> C}(T));
  NetVLAD: x^_n = X_n / ||X_n||, a_kn = softmax_k(W_a x^_n + b_a), r_k = sum_n a_kn (x^_n - c_k) (:func:`vlad`);
  each r_k L2-normalised, the flattened (K C) vector L2-normalised again, v = Linear_{KC -> C}(.);
  P_n = ReLU(W_2 ReLU(W_1 [X_n; v])) (two 1x1 convs 2C -> C -> C; X_n un-normalised).
* Augmentation module (:class:`AugmentationModule`): a shared 1x1 conv E; X'_n = E(Y_n), C'_k = E(c_k);
  alpha_kn = softmax_k(C'_k . X'_n) (:func:`prototype_attention`), F_n = sum_k alpha_kn C'_k;
  out_n = ReLU(MLP([X'_n; F_n]) + Y_n), MLP = conv(2C -> C), ReLU, conv(C -> C), ReLU.
  Y = P in training (the teacher path); Y = the student's last-stage tokens at inference (no teacher needed).
* Heads: the student tokens and the augmented tokens share one LayerNorm and one linear head on the mean-pooled
  token (the mean replaces DeiT's CLS token): z_S and z_aug.
* Loss (reconstructed): L = CE(z_S, y) + CE(z_aug, y) + lambda * KL(softmax(z_aug) || softmax(z_S)), z_aug detached
  in the KL (the teacher-path prediction teaches the student; the detach side is unverified).
* Prediction: from z_aug (Y = the student's tokens), as ``inference.py``; ``predict_from="student"`` reads z_S.

Adaptation (the spec's demonstration): the teacher is the akamaster ResNet-56 trained on CIFAR-10, frozen; the
student task is scikit-learn digits (another label space), upsampled to 32 x 32 and repeated to 3 channels; the
student a CIFAR ResNet-8 (16/32/64, 1 block per stage) whose 64 x 8 x 8 last stage is the token grid; K = 24.
``mode`` gives the spec's baselines in the same learner: ``"scratch"`` (CE only), ``"fitnet"`` (CE + a FitNet hint:
a 1x1 conv regressor from the student's last stage to the teacher's layer3, MSE, weight ``hint_weight``).
The teacher is held outside the module tree (not a parameter, not in checkpoints) and always in eval mode.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.registry import Provenance
from distill.streams.learners import Learner, TaskInfo, register_learner


def vlad(x_hat: torch.Tensor, assign_logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """NetVLAD residuals r_k = sum_n softmax_k(assign_logits)_kn (x^_n - c_k), each L2-normalised: (B, K, C).
    ``x_hat``: (B, N, C) normalised tokens; ``assign_logits``: (B, N, K); ``centres``: (K, C)."""
    a = F.softmax(assign_logits, dim=2)  # (B, N, K)
    r = torch.einsum("bnk,bnc->bkc", a, x_hat) - a.sum(dim=1)[:, :, None] * centres[None]
    return F.normalize(r, dim=2)


def prototype_attention(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_kn = softmax_k(c_k . x_n) (B, N, K) and F_n = sum_k alpha_kn c_k (B, N, C); ``x`` (B, N, C), ``c``
    (K, C)."""
    alpha = F.softmax(x @ c.T, dim=2)
    return alpha, alpha @ c


class PrototypeModule(nn.Module):
    """Teacher tokens (B, N, D_T) -> P (B, N, C) through the NetVLAD step on the shared prototypes."""

    def __init__(self, teacher_dim: int, dim: int, prototypes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(teacher_dim, dim)
        self.assign = nn.Linear(dim, prototypes)  # the 1x1 conv of NetVLAD's soft assignment
        self.vlad_fc = nn.Linear(prototypes * dim, dim)
        self.fuse = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.proj(tokens))
        x_hat = F.normalize(x, dim=2)
        r = vlad(x_hat, self.assign(x_hat), centres)
        v = self.vlad_fc(F.normalize(r.flatten(1), dim=1))  # (B, C)
        return self.fuse(torch.cat([x, v[:, None, :].expand_as(x)], dim=2))


class AugmentationModule(nn.Module):
    """Y (B, N, C) -> ReLU(MLP([E(Y); F]) + Y), F the prototype attention read-out."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)  # E, shared by tokens and prototypes
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, y: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        x2 = self.embed(y)
        _, f = prototype_attention(x2, self.embed(centres))
        return F.relu(self.mlp(torch.cat([x2, f], dim=2)) + y)


def proc_kd_loss(z_s: torch.Tensor, z_aug: torch.Tensor, y: torch.Tensor, kl_weight: float) -> dict[str, torch.Tensor]:
    """CE(z_S, y), CE(z_aug, y) and lambda * KL(softmax(z_aug) || softmax(z_S)) with z_aug detached (batch mean)."""
    p_aug = F.softmax(z_aug.detach(), dim=1)
    kl = (p_aug * (F.log_softmax(z_aug.detach(), dim=1) - F.log_softmax(z_s, dim=1))).sum(dim=1).mean()
    return {"ce": F.cross_entropy(z_s, y), "ce_aug": F.cross_entropy(z_aug, y), "kl": kl_weight * kl}


def to_teacher_input(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    """(B, C, h, w) -> (B, 3, size, size): bilinear upsampling, channels repeated (or averaged) to 3."""
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if x.shape[1] != 3:
        x = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return x.contiguous()


@torch.no_grad()
def teacher_tokens(teacher: nn.Module, x: torch.Tensor, grid: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A CIFAR ResNet's three stage outputs average-pooled to ``grid`` x ``grid`` and concatenated along channels,
    as tokens (B, grid^2, 16+32+64), and its layer3 map (B, 64, 8, 8) for the FitNet hint."""
    out = F.relu(teacher.bn1(teacher.conv1(x)))
    f1 = teacher.layer1(out)
    f2 = teacher.layer2(f1)
    f3 = teacher.layer3(f2)
    maps = [F.adaptive_avg_pool2d(f, grid) for f in (f1, f2, f3)]
    return torch.cat(maps, dim=1).flatten(2).transpose(1, 2).contiguous(), f3


class ResNet8Tokens(nn.Module):
    """The student: a CIFAR ResNet-8 (16/32/64, option-A shortcuts) without its classifier; returns the last stage's
    (B, 64, 8, 8) map."""

    def __init__(self) -> None:
        super().__init__()
        from distill.models.cifar_resnet import CifarResNet

        net = CifarResNet(8, num_classes=1)
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.width = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))


def _load_teacher(path: str) -> nn.Module:
    from distill.config import resolve_path
    from distill.models import load_pretrained_cifar_resnet

    teacher = load_pretrained_cifar_resnet(resolve_path(path)).eval()
    return teacher.requires_grad_(False)


@register_learner("proc_kd")
class ProCKD(Learner):
    """See the module docstring (``mode``: ``proc_kd``, or the baselines ``scratch`` and ``fitnet``)."""

    provenance = Provenance("Prototype-guided Cross-task Knowledge Distillation for Large-scale Models", 2022,
                            "2212.13180", "https://github.com/Daniel00008/ProC-KD", "FITEE")

    @classmethod
    def check_data(cls, options: dict[str, Any], dataset: Any) -> None:
        """The teacher's weights file must exist (modes that use the teacher)."""
        from distill.config import resolve_path

        if options.get("mode", "proc_kd") == "scratch":
            return
        try:
            found = resolve_path(options["teacher"]).is_file()
        except ValueError as e:  # a builtin: name that is not shipped
            raise ValueError(f"learner.options.teacher: {e}") from None
        if not found:
            raise ValueError(f"learner.options.teacher: {options['teacher']} does not exist")

    def __init__(self, num_classes: int, channels: int, mode: Literal["proc_kd", "scratch", "fitnet"] = "proc_kd",
                 teacher: str = "builtin:resnet56_cifar10_jpeg.safetensors", prototypes: int = 24,
                 kl_weight: float = 1.0, hint_weight: float = 1.0,
                 predict_from: Literal["aug", "student"] = "aug", image_size: int = 32) -> None:
        super().__init__(num_classes, channels)
        self.mode, self.kl_weight, self.hint_weight = mode, kl_weight, hint_weight
        self.predict_from, self.image_size = predict_from, image_size
        self.student = ResNet8Tokens()
        c = self.student.width
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, num_classes)
        # the teacher lives outside the module tree: never a parameter, never in a checkpoint, never trained
        self._teacher: list[nn.Module] = [_load_teacher(teacher)] if mode != "scratch" else []
        if mode == "proc_kd":
            self.centres = nn.Parameter(torch.rand(prototypes, c))  # U[0, 1), as models.py
            self.prototype = PrototypeModule(112, c, prototypes)
            self.augment = AugmentationModule(c)
        elif mode == "fitnet":
            self.regressor = nn.Conv2d(c, 64, 1)

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            raise RuntimeError("proc_kd: mode 'scratch' has no teacher")
        return self._teacher[0]

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        if task.index > 0:
            raise ValueError("proc_kd: one task (the student's label space); use a stream with a single task")

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's token grid (B, N, C) and its map (B, C, 8, 8)."""
        m = self.student(to_teacher_input(x, self.image_size))
        return m.flatten(2).transpose(1, 2), m

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(tokens).mean(dim=1))

    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        tok, fmap = self.tokens(x)
        z_s = self.classify(tok)
        if self.mode == "scratch":
            return {"ce": F.cross_entropy(z_s, y)}
        self.teacher.eval()
        t_tok, t_f3 = teacher_tokens(self.teacher, to_teacher_input(x, self.image_size))
        if self.mode == "fitnet":
            return {"ce": F.cross_entropy(z_s, y),
                    "hint": self.hint_weight * F.mse_loss(self.regressor(fmap), t_f3)}
        p = self.prototype(t_tok, self.centres)
        z_aug = self.classify(self.augment(p, self.centres))
        return proc_kd_loss(z_s, z_aug, y, self.kl_weight)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without the teacher: z_aug on the student's own tokens (or z_S)."""
        tok, _ = self.tokens(x)
        if self.mode == "proc_kd" and self.predict_from == "aug":
            return self.classify(self.augment(tok, self.centres))
        return self.classify(tok)
