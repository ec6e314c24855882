"""TRG: distillation through a token-level relationship graph over the tokens of the whole batch.

Tokens: a CNN feature map (B, C, H, W) gives one token per position (B, HW, C); a ViT's (B, N, D) token sequence
is used as it is. When the two models' maps differ in size, the larger is average-pooled to the smaller, so that
token positions correspond. Each step samples n positions per image, the *same* for teacher and student, giving
M = B n graph nodes t^T_i (dim D_T) and t^S_i (dim D_S). With sg = stop-gradient (the teacher is frozen):

* local (neighbourhood) loss. kNN(i): the k nearest other nodes of i in the *teacher's* token space (Euclidean),
  used as the support for both graphs (R: our choice, so that the supports match).
  A_ij = exp(-||t_i - t_j||^2 / (2 sigma)) for j in kNN(i), sigma = the median squared kNN distance of that model
  (detached). P_i = softmax over j in kNN(i) of A_ij, for each model.
      L_local = mean_i KL(P^S_i || P^T_i)          (``local_direction: st``, as summarised; ``ts``: KL(P^T || P^S))
* global (topology) loss: a contrastive loss over all M nodes with a linear map g: D_S -> D_T (the method's own
  parameters), cosine similarity and a dynamic temperature tau_g that falls linearly from ``tau_start`` to
  ``tau_end`` over training (coarse structure first, hard negatives later):
      L_global = -mean_i log [ exp(cos(g(t^S_i), t^T_i) / tau_g) / sum_j exp(cos(g(t^S_i), t^T_j) / tau_g) ]
* inner (contextual) loss, per image over all its tokens F (N_tok x D, each model its own D):
      CS = row-softmax(F F^T / sqrt(D)),   L_inner = mean_images MSE(CS^T, CS^S)

Returns ``{"inner": alpha L_inner, "local": beta L_local, "global": gamma L_global}``; the recipe adds CE and KD
(L = CE + KD + alpha L_inner + beta L_local + gamma L_global).

Provenance: no official code was found. The formulas follow a third-party summary of the paper, as written in the
spec (../shared/methods/text-graph.md, row 17). **Reconstructed (R)**, unverified against the paper: the shared
teacher kNN support, the softmax over the kNN support only, the mean (not the sum) over nodes in L_local and
L_global, cosine similarity in L_global, the KL direction of L_local, the defaults k = 8, sigma = median squared
kNN distance, alpha = beta = gamma = 1, and the tau_g schedule 1.0 -> 0.1 (linear). Positions are drawn from a
generator seeded by ``seed`` and the training step, so a resumed run draws the same ones.

Paper: Knowledge Distillation via Token-level Relationship Graph, 2023, arXiv:2306.12442.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import IMAGE_TASKS, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs


def as_tokens(feature: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, HW, C) tokens (row-major positions); (B, N, D) is returned as it is."""
    if feature.dim() == 4:
        return feature.flatten(2).transpose(1, 2)
    if feature.dim() == 3:
        return feature
    raise ValueError(f"trg: a feature must be (B, C, H, W) or (B, N, D), got {tuple(feature.shape)}")


def matched_tokens(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher tokens at the same positions: maps of different sizes are pooled to the smaller."""
    if fs.dim() == 4 and ft.dim() == 4 and fs.shape[-2:] != ft.shape[-2:]:
        size = min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1])
        fs, ft = F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
    ts, tt = as_tokens(fs), as_tokens(ft)
    if ts.shape[:2] != tt.shape[:2]:
        raise ValueError(f"trg: student tokens {tuple(ts.shape)} and teacher tokens {tuple(tt.shape)} differ in "
                         "batch or token count")
    return ts, tt


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j||^2 of the rows of x (clamped at 0)."""
    sq = x.pow(2).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)


def knn_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """(M, M) boolean: True at the k nearest other rows of each row (Euclidean; ties by index)."""
    d = squared_distances(x.detach().float())
    d.fill_diagonal_(float("inf"))
    idx = d.topk(min(k, x.shape[0] - 1), dim=1, largest=False).indices
    return torch.zeros_like(d, dtype=torch.bool).scatter_(1, idx, True)


def knn_log_probs(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over j in kNN(i) of A_ij = exp(-d_ij^2 / (2 sigma)), sigma the median of d^2 on the mask."""
    d2 = squared_distances(x.float())
    sigma = d2.detach()[mask].median().clamp_min(1e-12)
    a = torch.exp(-d2 / (2.0 * sigma))
    return a.masked_fill(~mask, float("-inf")).log_softmax(dim=1)


def local_loss(ts: torch.Tensor, tt: torch.Tensor, k: int, direction: Literal["st", "ts"] = "st") -> torch.Tensor:
    """L_local = mean_i KL(P^S_i || P^T_i) (``st``) or KL(P^T_i || P^S_i) (``ts``) on the teacher's kNN support."""
    mask = knn_mask(tt, k)
    # log-probabilities off the support are -inf: set them to 0 first (0 * (-inf) would make NaN gradients)
    log_ps = knn_log_probs(ts, mask).masked_fill(~mask, 0.0)
    log_pt = knn_log_probs(tt.detach(), mask).masked_fill(~mask, 0.0)
    log_p, log_q = (log_ps, log_pt) if direction == "st" else (log_pt, log_ps)
    return (log_p.exp() * mask * (log_p - log_q)).sum(1).mean()


def global_loss(projected: torch.Tensor, tt: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of cos(g(t^S_i), t^T_j) / tau with the matching node as the positive."""
    logits = F.normalize(projected.float(), dim=1) @ F.normalize(tt.detach().float(), dim=1).t() / tau
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def context_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """CS = row-softmax(F F^T / sqrt(D)) per image, tokens (B, N, D) -> (B, N, N)."""
    f = tokens.float()
    return torch.softmax(f @ f.transpose(1, 2) / f.shape[-1] ** 0.5, dim=-1)


def inner_loss(ts: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
    """mean over images of MSE(CS^T, CS^S)."""
    return F.mse_loss(context_similarity(ts), context_similarity(tt.detach()))


@register_method(
    "trg",
    family="relations",
    paper="Knowledge Distillation via Token-level Relationship Graph",
    year=2023,
    arxiv="2306.12442",
    aliases=("token_relationship_graph",),
)
class TRG(FeaturePair):
    """Token-level relationship graph: local kNN neighbourhoods, global contrastive topology, inner context."""

    tasks = IMAGE_TASKS
    method_name = "trg"

    def __init__(self, student: str = "f3", teacher: str | None = None, tokens_per_image: int = 4, k: int = 8,
                 alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0, tau_start: float = 1.0,
                 tau_end: float = 0.1, local_direction: Literal["st", "ts"] = "st", seed: int = 0):
        super().__init__()
        self.tap_pair(student, teacher or student)
        if tokens_per_image < 1:
            raise ValueError(f"trg: tokens_per_image must be at least 1, got {tokens_per_image}")
        if k < 1:
            raise ValueError(f"trg: k must be at least 1, got {k}")
        if tau_start <= 0 or tau_end <= 0:
            raise ValueError(f"trg: tau_start and tau_end must be positive, got {tau_start}, {tau_end}")
        self.n, self.k = int(tokens_per_image), int(k)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.local_direction = local_direction
        self.seed = int(seed)
        self.proj: nn.Module = nn.Identity()

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        fs, ft = self.setup_features(student, teacher)
        ts, tt = matched_tokens(fs, ft)
        self.proj = nn.Linear(ts.shape[-1], tt.shape[-1]).to(fs.device)

    def tau(self, progress: float) -> float:
        """tau_g: linear from ``tau_start`` (progress 0) to ``tau_end`` (progress 1)."""
        p = min(max(float(progress), 0.0), 1.0)
        return self.tau_start + (self.tau_end - self.tau_start) * p

    def sample(self, batch: int, tokens: int, step: int, device: torch.device) -> torch.Tensor:
        """(B, n) positions, n distinct per image, from a generator seeded by ``seed`` and ``step``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        n = min(self.n, tokens)
        return torch.rand(batch, tokens, generator=g).argsort(dim=1)[:, :n].to(device)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        fs, ft = self.step_features(inputs)
        ts, tt = matched_tokens(fs, ft.detach())
        b, n_tok = ts.shape[:2]
        pos = self.sample(b, n_tok, inputs.step, ts.device)
        ns = ts.gather(1, pos[..., None].expand(-1, -1, ts.shape[-1])).reshape(-1, ts.shape[-1])
        nt = tt.gather(1, pos[..., None].expand(-1, -1, tt.shape[-1])).reshape(-1, tt.shape[-1])
        terms = {}
        if self.alpha:
            terms["inner"] = self.alpha * inner_loss(ts, tt)
        if self.beta:
            terms["local"] = self.beta * local_loss(ns, nt, self.k, self.local_direction)
        if self.gamma:
            terms["global"] = self.gamma * global_loss(self.proj(ns), nt, self.tau(inputs.progress))
        return terms
