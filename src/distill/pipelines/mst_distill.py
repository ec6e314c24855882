"""MST-Distill: a mixture of specialised teachers for cross-modal distillation.

Li et al., "MST-Distill: Mixture of Specialized Teachers for Cross-Modal Knowledge Distillation", ACM MM 2025
(arXiv 2507.07015); official code Gray-OREO/MST-Distill (``KD_methods/MST.py``, ``main-MST-Distill.py``). Spec:
pipelines.md row 24.

The student sees modality m1 only; a multimodal teacher T sees m1 + m2 and a cross-modal auxiliary teacher A sees m2.
With ``KL_tau(p || q) = tau^2 * KL(softmax(p / tau) || softmax(q / tau))`` (batch mean; p the target logits):

* Stage 1, co-training of T, A and S (one Adam over the three):
  ``L = sum_m CE(z_m, y) + sum_{m != m'} KL_tau(z_m' || z_m)`` over the six directed pairs, targets **not**
  detached (mutual learning) -- :func:`co_training_loss`.
* Stage 2, specialised teachers: a :class:`MaskNet` per teacher layer (two layers per teacher: four specialised
  teachers). A forward hook replaces the layer's output f by ``m * f`` with ``m = MaskNet(f) in (0, 1)^D``
  (:func:`masked`). Each MaskNet alone is trained on ``KL_tau(sg(z_S) || z_masked_teacher)`` -- it pulls its
  teacher toward the student (:func:`mask_loss`); only the MaskNet is stepped.
* Stage 3, routed distillation, teachers and masks frozen: ``g = softmax(GateNet(z_S))`` over the E specialised
  teachers, ``GateNet = Linear(C, 2C) -> Linear(2C, E)`` (no activation between, as in the code), and

  ``L = w_task * CE(z_S, y) + w_kl * (1/k) * sum_{j in topk(g)} KL_tau(sg(z_j) || z_S) + w_lb * L_lb``

  with ``L_lb = (1/E) * sum_e u_e (log u_e - log gbar_e)`` (KL of the uniform u to the batch-mean gate ``gbar``,
  ``KLDiv`` with batch mean over the E-vector) -- :func:`routed_loss`. The top-k choice is not differentiable, so
  the gate learns from ``L_lb`` only (which also reaches the student through z_S): the official code's behaviour.

MaskNet on a 1-d feature f in R^D: ``e = Linear(D, h*D)(f)`` as D tokens of width h, multi-head self-attention
(``heads`` heads) over them, ``Linear(h, 1)`` and a sigmoid: one mask value per feature;
``h = floor(D / (factor * heads)) * heads``. A 2-d map (B, C, H, W) is first summarised by a depthwise stride-2
conv, a 1x1 conv, BatchNorm, ReLU and global average pooling; its mask scales the C channels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.taps import resolve_module


def kl_tau(target: torch.Tensor, logits: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """``tau^2 * KL(softmax(target / tau) || softmax(logits / tau))``, mean over the batch."""
    return kl_tau_per_example(target, logits, tau).mean()


def kl_tau_per_example(target: torch.Tensor, logits: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    p_log = F.log_softmax(target / tau, dim=-1)
    q_log = F.log_softmax(logits / tau, dim=-1)
    return tau * tau * (p_log.exp() * (p_log - q_log)).sum(-1)


def co_training_loss(logits: Sequence[torch.Tensor], y: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """Stage 1: every network's CE plus KL_tau between every ordered pair (targets not detached)."""
    loss = sum(F.cross_entropy(z, y) for z in logits)
    for i, zi in enumerate(logits):
        for j, zj in enumerate(logits):
            if i != j:
                loss = loss + kl_tau(zj, zi, tau)
    return loss  # type: ignore[return-value]


class MaskNet(nn.Module):
    """A soft feature mask computed from the feature itself (see the module docstring)."""

    def __init__(self, dim: int, heads: int = 3, factor: int = 2, spatial: bool = False):
        super().__init__()
        self.dim, self.spatial = dim, spatial
        width = (dim // (factor * heads)) * heads
        if width < heads:
            raise ValueError(f"mst_distill: a feature of width {dim} is too narrow for a MaskNet with {heads} heads "
                             f"and factor {factor}")
        self.width = width
        self.summary = nn.Sequential(
            nn.Conv2d(dim, dim, 3, stride=2, padding=1, groups=dim), nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()) if spatial else None
        self.embed = nn.Linear(dim, width * dim)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Linear(width, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """The mask, (B, D) -- or (B, C, 1, 1) for a 2-d map, to broadcast over its positions."""
        v = self.summary(f) if self.summary is not None else f
        if v.dim() != 2 or v.shape[1] != self.dim:
            raise ValueError(f"mst_distill: MaskNet for width {self.dim} got a feature of shape {tuple(f.shape)}")
        e = self.embed(v).view(v.shape[0], self.dim, self.width)
        a = self.attn(e, e, e, need_weights=False)[0]
        m = torch.sigmoid(self.out(a)).squeeze(-1)
        return m.view(*m.shape, 1, 1) if self.spatial else m


@contextmanager
def masked(model: nn.Module, layer: str, mask: nn.Module) -> Iterator[None]:
    """While inside, ``model``'s module ``layer`` returns ``mask(f) * f`` instead of its output f."""
    module = resolve_module(model, layer)

    def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        return mask(out) * out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def mask_loss(student_logits: torch.Tensor, masked_teacher_logits: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """Stage 2: ``KL_tau(sg(z_S) || z_masked_teacher)``."""
    return kl_tau(student_logits.detach(), masked_teacher_logits, tau)


class GateNet(nn.Module):
    """``Linear(C, 2C) -> Linear(2C, E)`` on the student's logits (no activation between, as the official code)."""

    def __init__(self, num_classes: int, ways: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_classes, 2 * num_classes), nn.Linear(2 * num_classes, ways))

    def forward(self, student_logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(student_logits), dim=-1)


def balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """``L_lb = (1/E) sum_e u_e (log u_e - log gbar_e)``, gbar the batch mean of the gates, u uniform."""
    ways = gates.shape[-1]
    mean = gates.mean(0).clamp_min(1e-12)
    u = torch.full_like(mean, 1.0 / ways)
    return (u * (u.log() - mean.log())).sum() / ways


def routed_loss(student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor, gates: torch.Tensor,
                k: int = 1, tau: float = 4.0, w_task: float = 1.0, w_kl: float = 1.0, w_lb: float = 1.0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage 3. ``teacher_logits``: (E, B, C), the E specialised teachers' logits (detached here); ``gates``:
    (B, E). Returns the loss and its terms (``ce``, ``kd``, ``balance``) and ``routes`` (B, k), the chosen
    teachers."""
    ways = teacher_logits.shape[0]
    if gates.shape != (student_logits.shape[0], ways):
        raise ValueError(f"mst_distill: gates of shape {tuple(gates.shape)} for {ways} teachers and a batch of "
                         f"{student_logits.shape[0]}")
    if not 1 <= k <= ways:
        raise ValueError(f"mst_distill: k={k} must be in 1..{ways}")
    routes = gates.detach().topk(k, dim=-1).indices  # (B, k)
    rows = torch.arange(student_logits.shape[0], device=student_logits.device)
    kd = student_logits.new_zeros(())
    for j in range(k):
        chosen = teacher_logits.detach()[routes[:, j], rows]  # (B, C): each example's j-th teacher
        kd = kd + kl_tau(chosen, student_logits, tau)
    kd = kd / k
    ce = F.cross_entropy(student_logits, y)
    lb = balance_loss(gates)
    loss = w_task * ce + w_kl * kd + w_lb * lb
    return loss, {"ce": ce.detach(), "kd": kd.detach(), "balance": lb.detach(), "routes": routes}
