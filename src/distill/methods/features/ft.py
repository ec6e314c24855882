"""Factor transfer: a paraphraser compresses the teacher map into factors, a translator mimics them.

Initialisation stage (``init_epochs``, RepDistiller 30): the paraphraser P = (encoder, decoder) on the teacher
map t (C_t channels, rate k) minimises a reconstruction loss ||P(t) - t|| (``reconstruction``: ``mse`` mean =
RepDistiller, ``l1`` mean = official, ``mse_sum`` = torchdistill). Main stage: F_t = encoder(t), frozen (no
gradient, eval mode); F_s = translator(s), three 3x3 convs C_s -> C_s -> kC_t -> kC_t; and
L = || F_s / ||F_s||_2 - F_t / ||F_t||_2 ||_p  over C*H*W per sample (:func:`ft_factor_loss`),
p = 1: mean |.| over B*D (official ``nn.L1Loss``, torchdistill ``FTLoss(p=1, reduction='mean')``).
Official weight beta = 500 (torchdistill sample 1000). Every conv has a bias and is followed by LeakyReLU(0.1);
BN is optional (``paraphraser_bn`` False, ``translator_bn`` True as in RepDistiller; the official code has none).

``variant="repdistiller"`` replaces the factor by RepDistiller's attention-like one
(:func:`repdistiller_factor` of F_s and F_t) with elementwise |.|^p averaged (its table uses beta = 200).
If the two factor maps differ spatially the larger is adaptive-average-pooled (RepDistiller). Default taps:
f3 for both. The paraphraser is trained at the run's base learning rate (RepDistiller uses 0.01 for it).

Paper: Paraphrasing Complex Network: Network Compression via Factor Transfer, NeurIPS 2018, arXiv:1802.04977; code:
https://github.com/Jangho-Kim/Factor-Transfer-pytorch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import IMAGE_TASKS, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.features.adapters import match_spatial


def _ft_stack(channels: list[int], bn: bool, transposed: bool = False) -> nn.Sequential:
    """3x3 (transposed) convs, stride 1, padding 1, with biases, each followed by [BN] and LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    for cin, cout in zip(channels[:-1], channels[1:]):
        layers.append(conv(cin, cout, kernel_size=3, stride=1, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's teacher-side autoencoder: encoder C -> C -> kC -> kC, decoder kC -> kC -> C -> C (3x3 convs)."""

    def __init__(self, channels: int, rate: float = 0.5, bn: bool = False):
        super().__init__()
        factor = max(1, int(channels * rate))
        self.encoder = _ft_stack([channels, channels, factor, factor], bn)
        self.decoder = _ft_stack([factor, factor, channels, channels], bn, transposed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def ft_factor_loss(fs: torch.Tensor, ft: torch.Tensor, p: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """|| F_s / ||F_s||_2 - F_t / ||F_t||_2 ||_p with F flattened over C*H*W per sample.

    p = 1: ``F.l1_loss`` with ``reduction`` (mean over B*D elements: the official ``nn.L1Loss``, torchdistill);
    other p: the per-sample p-norm, then the mean or sum over the batch (torchdistill ``FTLoss``).
    """
    ns = F.normalize(fs.flatten(1), dim=1)
    nt = F.normalize(ft.flatten(1), dim=1)
    if p == 1:
        return F.l1_loss(ns, nt, reduction=reduction)
    per_sample = torch.linalg.vector_norm(ns - nt, ord=p, dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def repdistiller_factor(f: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ``FactorTransfer.factor``: the channel mean of F^2, flattened and L2-normalised."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


@register_method(
    "ft",
    family="features",
    paper="Paraphrasing Complex Network: Network Compression via Factor Transfer",
    year=2018,
    arxiv="1802.04977",
    venue="NeurIPS",
    repo="https://github.com/Jangho-Kim/Factor-Transfer-pytorch",
    aliases=("factor_transfer",),
)
class FactorTransfer(FeaturePair):
    """Factor transfer: a paraphraser compresses the teacher map into factors, a translator mimics them."""

    tasks = IMAGE_TASKS

    method_name = "ft"

    def __init__(
        self,
        student: str = "f3",
        teacher: str = "f3",
        rate: float = 0.5,
        p: float = 1.0,
        reduction: Literal["mean", "sum"] = "mean",
        variant: Literal["paper", "repdistiller"] = "paper",
        reconstruction: Literal["mse", "l1", "mse_sum"] = "mse",
        paraphraser_bn: bool = False,
        translator_bn: bool = True,
        init_epochs: int = 30,
    ):
        super().__init__()
        if not 0 < rate:
            raise ValueError(f"ft: rate must be positive, got {rate}")
        if p <= 0:
            raise ValueError(f"ft: p must be positive, got {p}")
        if init_epochs < 0:
            raise ValueError(f"ft: init_epochs must be >= 0, got {init_epochs}")
        self.tap_pair(student, teacher)
        self.rate = float(rate)
        self.p = float(p)
        self.reduction = reduction
        self.variant = variant
        self.reconstruction = reconstruction
        self.paraphraser_bn = paraphraser_bn
        self.translator_bn = translator_bn
        self.init_epochs = int(init_epochs)
        self.paraphraser: Paraphraser | None = None
        self.translator: nn.Module | None = None

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        s, t = self.setup_features(student, teacher)
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(f"ft needs (B, C, H, W) maps, got {tuple(s.shape)} and {tuple(t.shape)}")
        self.paraphraser = Paraphraser(t.shape[1], self.rate, self.paraphraser_bn).to(t.device)
        factor = max(1, int(t.shape[1] * self.rate))
        self.translator = _ft_stack([s.shape[1], s.shape[1], factor, factor], self.translator_bn).to(s.device)

    def _ready(self) -> tuple[Paraphraser, nn.Module]:
        if self.paraphraser is None or self.translator is None:
            raise RuntimeError("FactorTransfer.setup() must run before the first step (the trainer does this)")
        return self.paraphraser, self.translator

    def init_loss(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        paraphraser, _ = self._ready()
        t = require_teacher(inputs, "ft").feature(self.teacher_feature).float()
        rec = paraphraser(t).float()
        if self.reconstruction == "l1":
            loss = F.l1_loss(rec, t)
        else:
            loss = F.mse_loss(rec, t, reduction="sum" if self.reconstruction == "mse_sum" else "mean")
        return {"reconstruction": loss}

    def teacher_factor(self, t: torch.Tensor) -> torch.Tensor:
        """F_t = encoder(t), computed in eval mode without gradient (the paraphraser is frozen after stage 1)."""
        paraphraser, _ = self._ready()
        was_training = paraphraser.training
        paraphraser.eval()
        try:
            with torch.no_grad():
                return paraphraser.encoder(t).float()
        finally:
            paraphraser.train(was_training)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        _, translator = self._ready()
        fs = translator(inputs.student.feature(self.student_feature)).float()
        ft = self.teacher_factor(require_teacher(inputs, "ft").feature(self.teacher_feature).float())
        fs, ft = match_spatial(fs, ft)
        if self.variant == "repdistiller":
            diff = (repdistiller_factor(fs) - repdistiller_factor(ft)).abs().pow(self.p)
            return {"loss": diff.mean() if self.reduction == "mean" else diff.sum()}
        return {"loss": ft_factor_loss(fs, ft, self.p, self.reduction)}
