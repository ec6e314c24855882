"""Feature-transfer methods with learned adapters or initialisation stages: VID, AB, FT, FSP and NST.

AB, FT and FSP use the framework's initialisation stage (``init_epochs`` / :meth:`Method.init_loss`): during the
first ``init_epochs`` epochs only their ``init_loss`` is minimised (RepDistiller's ``helper/pretrain.py``), then
the main stage runs with the whole composition.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.features import conv_regressor


# -- shared helpers ----------------------------------------------------------------------------------------------
def _feature_lists(method: str, student: list[str] | None, teacher: list[str] | None, weights: list[float] | None,
                   default: list[str]) -> tuple[list[str], list[str], list[float]]:
    s = list(student or default)
    t = list(teacher or s)
    if len(s) != len(t):
        raise ValueError(f"{method}: student and teacher feature lists must have the same length")
    w = [float(x) for x in (weights or [1.0] * len(s))]
    if len(w) != len(s):
        raise ValueError(f"{method}: one weight per feature pair is needed")
    return s, t, w


def match_spatial(a: torch.Tensor, b: torch.Tensor, pool: str = "avg") -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-pool whichever of two (B, C, H, W) maps is spatially larger to the other's size (RepDistiller and
    mdistiller pool with averages; torchdistill's FSP with maxima). Maps of equal size are returned untouched."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    fn = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
    if tuple(a.shape[-2:]) != size:
        a = fn(a, size)
    if tuple(b.shape[-2:]) != size:
        b = fn(b, size)
    return a, b


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(B, D) vectors as (B, D, 1, 1) maps, so 1x1-conv adapters also apply to pooled features."""
    return x[:, :, None, None] if x.dim() == 2 else x


def _check_stage_options(method: str, init_epochs: int, main_stage: bool | None) -> bool:
    if init_epochs < 0:
        raise ValueError(f"{method}: init_epochs must be >= 0, got {init_epochs}")
    active = (init_epochs == 0) if main_stage is None else bool(main_stage)
    if init_epochs == 0 and not active:
        raise ValueError(f"{method}: with init_epochs 0 and main_stage false the method would do nothing")
    return active


# -- VID ---------------------------------------------------------------------------------------------------------
def vid_nll(mean: torch.Tensor, var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood without the 1/2 log 2 pi constant: mean of 1/2 [(mu - t)^2 / var + log var]
    (torchdistill ``VIDLoss`` for one pair, given (mu, var))."""
    return (0.5 * ((mean - target).pow(2) / var + var.log())).mean()


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=False)


@register_method(
    "vid",
    family="features",
    paper="Variational Information Distillation for Knowledge Transfer",
    year=2019,
    arxiv="1904.05835",
    venue="CVPR",
    repo="https://github.com/ssahn0215/variational-information-distillation",
    aliases=("variational_information_distillation",),
)
class VID(Method):
    """Variational information distillation: a Gaussian likelihood of the teacher feature given the student's.

    Per pair j: mu = r_j(f_s) with r_j = 1x1 conv (C_s -> C_m), ReLU, 1x1 conv (C_m -> C_m), ReLU, 1x1 conv
    (C_m -> C_t), no biases, no BN; sigma^2_c = softplus(alpha_c) + eps per teacher channel, alpha initialised to
    log(exp(init_pred_var - eps) - 1) so that sigma^2 starts at ``init_pred_var``;
    L = sum_j w_j * mean_{b,c,h,w} 1/2 [(mu - f_t)^2 / sigma^2 + log sigma^2].

    Follows RepDistiller's ``VIDLoss`` (taken from the authors' code): C_m = C_t by default (``mid_channels``),
    the spatially larger map is adaptive-average-pooled to the smaller one, init_pred_var 5.0, eps 1e-5, taps
    f1, f2, f3, method weight 1 with CE 1. torchdistill ``VIDLoss`` + ``Regressor4VID`` is the same with pair
    weights w_j (``weights``) and equal shapes. alpha is a trained parameter (RepDistiller, torchdistill; mdistiller
    never optimises it, a bug not reproduced). (B, D) features are treated as (B, D, 1, 1) maps.
    """

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        mid_channels: int | None = None,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.student_features, self.teacher_features, self.pair_weights = _feature_lists(
            "vid", student, teacher, weights, ["f1", "f2", "f3"])
        if init_pred_var <= eps:
            raise ValueError(f"vid: init_pred_var must exceed eps, got {init_pred_var} <= {eps}")
        if mid_channels is not None and mid_channels <= 0:
            raise ValueError(f"vid: mid_channels must be positive, got {mid_channels}")
        self.mid_channels = mid_channels
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.regressors = nn.ModuleList()
        self.alphas = nn.ParameterList()

    def student_taps(self) -> list[str]:
        return self.student_features

    def teacher_taps(self) -> list[str]:
        return self.teacher_features

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if teacher is None:
            raise ValueError("method 'vid' needs a teacher, but none is configured")
        self.regressors = nn.ModuleList()
        self.alphas = nn.ParameterList()
        alpha0 = math.log(math.expm1(self.init_pred_var - self.eps))
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s, t = student.feature(s_name), teacher.feature(t_name)
            cs, ct = s.shape[1], t.shape[1]
            cm = self.mid_channels or ct
            reg = nn.Sequential(_conv1x1(cs, cm), nn.ReLU(), _conv1x1(cm, cm), nn.ReLU(), _conv1x1(cm, ct))
            self.regressors.append(reg.to(s.device))
            self.alphas.append(nn.Parameter(torch.full((ct,), alpha0, device=s.device)))

    def variance(self, j: int) -> torch.Tensor:
        """sigma^2 of pair j, shaped (1, C_t, 1, 1)."""
        return (F.softplus(self.alphas[j]) + self.eps).view(1, -1, 1, 1)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if len(self.regressors) != len(self.student_features):
            raise RuntimeError("VID.setup() must run before the first step (the trainer does this)")
        teacher = require_teacher(inputs, "vid")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for j, (s_name, t_name, w) in enumerate(zip(self.student_features, self.teacher_features,
                                                    self.pair_weights)):
            fs = _as_map(inputs.student.feature(s_name).float())
            ft = _as_map(teacher.feature(t_name).float())
            fs, ft = match_spatial(fs, ft)
            total = total + w * vid_nll(self.regressors[j](fs).float(), self.variance(j), ft)
        return {"loss": total}


# -- AB ----------------------------------------------------------------------------------------------------------
def ab_hinge(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Sum over all elements of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]."""
    off = (source > -margin) & (target <= 0)
    on = (source <= margin) & (target > 0)
    return ((source + margin).pow(2) * off + (source - margin).pow(2) * on).sum()


def ab_connector(s_shape: torch.Size, t_shape: torch.Size, style: str = "repdistiller") -> nn.Module:
    """Connector from a student pre-activation map to the teacher's.

    ``repdistiller``: identity when channels and height match, else FitNet's conv regressor + BN without ReLU
    (:func:`~distill.methods.features.conv_regressor`). ``official`` (bhheo/AB_distillation): identity when the
    channels match, else a bias-free 1x1 conv (weights N(0, 2 / (k^2 C_out))) + BN (weight 1, bias 0).
    """
    if len(s_shape) != 4 or len(t_shape) != 4:
        raise ValueError(f"ab needs (B, C, H, W) maps, got {tuple(s_shape)} and {tuple(t_shape)}")
    if style == "repdistiller":
        if s_shape[1] == t_shape[1] and s_shape[2] == t_shape[2]:
            return nn.Identity()
        return conv_regressor(s_shape, t_shape, relu=False)
    if s_shape[2:] != t_shape[2:]:
        raise ValueError(f"ab: the official 1x1 connector needs equal spatial sizes, got {tuple(s_shape[2:])} "
                         f"and {tuple(t_shape[2:])}; use connector: repdistiller")
    if s_shape[1] == t_shape[1]:
        return nn.Identity()
    conv = nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(t_shape[1]))


@register_method(
    "ab",
    family="features",
    paper="Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons",
    year=2019,
    arxiv="1811.03233",
    venue="AAAI",
    repo="https://github.com/bhheo/AB_distillation",
    aliases=("activation_boundaries",),
)
class ActivationBoundaries(Method):
    """Activation-boundary transfer: a margin hinge that teaches the student which neurons are on or off.

    With s = connector_k(student pre-ReLU map k), t = teacher pre-ReLU map k and margin m, per element
    l = (s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0], and
    L = scale * sum_k w_k * sum(l_k) / B   (``reduction="mean"``; ``"sum"`` omits the /B).

    Defaults follow the official code and RepDistiller's ``ABLoss``: taps f1_pre, f2_pre, f3_pre (pre-ReLU),
    w_k = 2^(k - n + 1) (1/4, 1/2, 1 for three pairs), scale 3/1000, m = 1. torchdistill's ``AltActTransferLoss``
    with pair weights v_k and ``reduction`` equals ``weights=v, scale=1``. Connectors: see :func:`ab_connector`
    (``connector="repdistiller"`` default, ``"official"``).

    Schedule: the loss is the initialisation stage (RepDistiller ``init_epochs`` 30, training the student's feature
    layers and the connectors); the main stage then runs the rest of the composition (RepDistiller: CE only; the
    official code: KD with T = 3) and AB adds nothing. ``main_stage`` keeps the loss on in the main stage too; by
    default it is on only when ``init_epochs`` is 0 (torchdistill-style use as an ordinary loss).
    """

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        margin: float = 1.0,
        scale: float = 0.003,
        reduction: Literal["mean", "sum"] = "mean",
        connector: Literal["repdistiller", "official"] = "repdistiller",
        init_epochs: int = 30,
        main_stage: bool | None = None,
    ):
        super().__init__()
        s = list(student or ["f1_pre", "f2_pre", "f3_pre"])
        n = len(s)
        default_w = [2.0 ** (k - n + 1) for k in range(n)]
        self.student_features, self.teacher_features, self.pair_weights = _feature_lists(
            "ab", s, teacher, weights or default_w, s)
        if margin < 0:
            raise ValueError(f"ab: margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.scale = float(scale)
        self.reduction = reduction
        self.connector_style = connector
        self.init_epochs = int(init_epochs)
        self.main_stage = _check_stage_options("ab", self.init_epochs, main_stage)
        self.connectors = nn.ModuleList()

    def student_taps(self) -> list[str]:
        return self.student_features

    def teacher_taps(self) -> list[str]:
        return self.teacher_features

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if teacher is None:
            raise ValueError("method 'ab' needs a teacher, but none is configured")
        self.connectors = nn.ModuleList()
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s, t = student.feature(s_name), teacher.feature(t_name)
            self.connectors.append(ab_connector(s.shape, t.shape, self.connector_style).to(s.device))

    def ab_loss(self, inputs: StepInputs) -> torch.Tensor:
        if len(self.connectors) != len(self.student_features):
            raise RuntimeError("ActivationBoundaries.setup() must run before the first step (the trainer does this)")
        teacher = require_teacher(inputs, "ab")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        batch = None
        for k, (s_name, t_name, w) in enumerate(zip(self.student_features, self.teacher_features,
                                                    self.pair_weights)):
            fs = inputs.student.feature(s_name)
            ft = teacher.feature(t_name).float()
            batch = batch or fs.shape[0]
            total = total + w * ab_hinge(self.connectors[k](fs).float(), ft, self.margin)
        if self.reduction == "mean":
            total = total / batch
        return self.scale * total

    def init_loss(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {"loss": self.ab_loss(inputs)}

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if not self.main_stage:
            return {}  # connectors are discarded after the initialisation stage (official, RepDistiller)
        return {"loss": self.ab_loss(inputs)}


# -- FT ----------------------------------------------------------------------------------------------------------
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
class FactorTransfer(Method):
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
    """

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
        self.student_feature = student
        self.teacher_feature = teacher
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

    def student_taps(self) -> list[str]:
        return [self.student_feature]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_feature]

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if teacher is None:
            raise ValueError("method 'ft' needs a teacher, but none is configured")
        s = student.feature(self.student_feature)
        t = teacher.feature(self.teacher_feature)
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


# -- FSP ---------------------------------------------------------------------------------------------------------
def fsp_matrix(first: torch.Tensor, second: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """G_ij = (1 / HW) sum_hw F1_i,hw F2_j,hw, shape (B, C1, C2); the larger map is pooled to the smaller first."""
    first, second = match_spatial(first, second, pool)
    a, b = first.float().flatten(2), second.float().flatten(2)
    return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]


@register_method(
    "fsp",
    family="features",
    paper="A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning",
    year=2017,
    venue="CVPR",
)
class FSP(Method):
    """Flow-of-solution-procedure (FSP) matrices: Gram matrices between pairs of layers, matched to the teacher's.

    For pair k with maps (F1, F2) of each network: G = :func:`fsp_matrix` (B x C1 x C2), and by ``mode``:
    ``repdistiller`` (default): L = sum_k w_k mean_{b,i,j} (G_s - G_t)^2 (RepDistiller ``FSP``, an MSE);
    ``torchdistill``: L = (1/B) sum_k w_k sum_b sum_j ||G_s[b,:,j] - G_t[b,:,j]||_2 (``FSPLoss``, unsquared);
    ``paper``: L = (1/B) sum_k w_k sum_b ||G_s,b - G_t,b||_F^2.
    ``pool``: the larger map of a pair is adaptive-average-pooled (RepDistiller) or max-pooled (torchdistill).
    C1 and C2 must match between student and teacher (error at set-up).

    Default pairs are RepDistiller's consecutive (f0, f1), (f1, f2), (f2, f3) (``first`` / ``second``; teacher
    lists default to the student's). Schedule as in RepDistiller: the loss is the initialisation stage
    (``init_epochs`` 30, training the student's layers up to the last tap); in the main stage FSP adds nothing
    (RepDistiller's ``-b 50`` multiplies a zero) unless ``main_stage`` is true, which is the default when
    ``init_epochs`` is 0.
    """

    def __init__(
        self,
        first: list[str] | None = None,
        second: list[str] | None = None,
        teacher_first: list[str] | None = None,
        teacher_second: list[str] | None = None,
        weights: list[float] | None = None,
        mode: Literal["repdistiller", "torchdistill", "paper"] = "repdistiller",
        pool: Literal["avg", "max"] = "avg",
        init_epochs: int = 30,
        main_stage: bool | None = None,
    ):
        super().__init__()
        self.first = list(first or ["f0", "f1", "f2"])
        self.second = list(second or ["f1", "f2", "f3"])
        self.teacher_first = list(teacher_first or self.first)
        self.teacher_second = list(teacher_second or self.second)
        n = len(self.first)
        if not (len(self.second) == len(self.teacher_first) == len(self.teacher_second) == n):
            raise ValueError("fsp: first, second, teacher_first and teacher_second must have the same length")
        self.pair_weights = [float(x) for x in (weights or [1.0] * n)]
        if len(self.pair_weights) != n:
            raise ValueError("fsp: one weight per layer pair is needed")
        self.mode = mode
        self.pool = pool
        self.init_epochs = int(init_epochs)
        self.main_stage = _check_stage_options("fsp", self.init_epochs, main_stage)

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(self.first + self.second))

    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(self.teacher_first + self.teacher_second))

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if teacher is None:
            raise ValueError("method 'fsp' needs a teacher, but none is configured")
        for names in zip(self.first, self.second, self.teacher_first, self.teacher_second):
            s1, s2 = student.feature(names[0]).shape[1], student.feature(names[1]).shape[1]
            t1, t2 = teacher.feature(names[2]).shape[1], teacher.feature(names[3]).shape[1]
            if (s1, s2) != (t1, t2):
                raise ValueError(f"fsp: channel counts differ for pair {names}: student ({s1}, {s2}), teacher "
                                 f"({t1}, {t2}); FSP needs equal channels")

    def fsp_loss(self, inputs: StepInputs) -> torch.Tensor:
        teacher = require_teacher(inputs, "fsp")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for s1, s2, t1, t2, w in zip(self.first, self.second, self.teacher_first, self.teacher_second,
                                     self.pair_weights):
            gs = fsp_matrix(inputs.student.feature(s1), inputs.student.feature(s2), self.pool)
            gt = fsp_matrix(teacher.feature(t1), teacher.feature(t2), self.pool)
            if gs.shape != gt.shape:
                raise ValueError(f"fsp: FSP matrices differ in shape: {tuple(gs.shape)} vs {tuple(gt.shape)}")
            diff = gs - gt
            if self.mode == "repdistiller":
                term = diff.pow(2).mean()
            elif self.mode == "torchdistill":
                term = diff.norm(dim=1).sum() / diff.shape[0]
            else:
                term = diff.pow(2).sum() / diff.shape[0]
            total = total + w * term
        return total

    def init_loss(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {"loss": self.fsp_loss(inputs)}

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if not self.main_stage:
            return {}
        return {"loss": self.fsp_loss(inputs)}


# -- NST ---------------------------------------------------------------------------------------------------------
def nst_mmd(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Squared MMD with the kernel k(a, b) = (a^T b)^2 between the L2-normalised channel rows of two maps:
    mean k(t, t') [constant] + mean k(s, s') - 2 mean k(s, t), the means over the batch and channel pairs."""
    fs, ft = match_spatial(fs.float(), ft.float())
    s = F.normalize(fs.flatten(2), dim=2)
    t = F.normalize(ft.flatten(2), dim=2)

    def kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(t, t).detach() + kernel_mean(s, s) - 2 * kernel_mean(s, t)


@register_method(
    "nst",
    family="features",
    paper="Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
    year=2017,
    arxiv="1707.01219",
    repo="https://github.com/TuSimple/neuron-selectivity-transfer",
    aliases=("neuron_selectivity_transfer",),
)
class NST(Method):
    """Neuron selectivity transfer: MMD between the teacher's and the student's distributions of channel maps.

    Each channel's spatial map (over H*W, after pooling the larger map to the smaller) is L2-normalised and treated
    as a sample; with the polynomial kernel k(a, b) = (a^T b)^2 (d = 2, c = 0),
    L = sum_j w_j [mean_{b,i,i'} k(t_i, t_i') + mean_{b,j,j'} k(s_j, s_j') - 2 mean_{b,j,i} k(s_j, t_i)]
    (:func:`nst_mmd`; C_s and C_t may differ). This is mdistiller's ``nst_loss`` (identical to RepDistiller's
    ``NSTLoss``, full form); torchdistill has no NST. Defaults: taps f1, f2, f3, pair weights 1; the CIFAR method
    weight is 50 (``cfg.NST.FEAT_WEIGHT``) with CE 1.
    """

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
    ):
        super().__init__()
        self.student_features, self.teacher_features, self.pair_weights = _feature_lists(
            "nst", student, teacher, weights, ["f1", "f2", "f3"])

    def student_taps(self) -> list[str]:
        return self.student_features

    def teacher_taps(self) -> list[str]:
        return self.teacher_features

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "nst")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for s_name, t_name, w in zip(self.student_features, self.teacher_features, self.pair_weights):
            total = total + w * nst_mmd(inputs.student.feature(s_name), teacher.feature(t_name))
        return {"loss": total}
