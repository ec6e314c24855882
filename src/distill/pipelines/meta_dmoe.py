"""Meta-DMoE: test-time adaptation as distillation from a mixture of domain experts.

Zhong, Chen, Wang, Zhang, Lim: "Meta-DMoE: Adapting to Domain Shift by Meta-Distillation from
Mixture-of-Experts", NeurIPS 2022 (arXiv 2210.03885); official code n3il666/Meta-DMoE. Spec: pipelines.md row 22.

Parts (notation of the paper):

* N domain experts, each trained on one cluster of source domains; ``e_n(x) in R^D`` is expert n's pooled
  penultimate **feature** (not its logits). They are frozen; their features can be computed once per image.
* The aggregator (:class:`FeatureAggregator`) takes the N expert features of an image as N tokens and applies one
  pre-norm transformer layer (multi-head self-attention, then a D -> 2D -> D GELU MLP, dropout, residuals) and the
  mean over tokens: ``t(x) in R^D``. No positional encoding, so ``t`` does not depend on the experts' order. A
  LayerNorm + Linear head on ``t`` is used only to pre-train the aggregator with the task loss.
* The student is a feature extractor ``phi_theta`` (its pooled penultimate feature, D wide) and a head ``h_psi``.
* Meta-training (:func:`meta_step`), on a batch from one source domain d whose first ``sup_size`` images are the
  support S and the rest the query Q:

  1. mask: the expert of d's cluster is removed, leaving N - 1 tokens (:func:`drop_expert`);
  2. inner step, labels unused: ``theta' = theta - a_in * grad_theta mean_{S, dims}(phi_theta(x) - t_{-d}(x))^2``
     (the teacher tokens under no-grad; the aggregator is *not* detached: its output is the target);
  3. outer step: ``CE(h_psi(phi_theta'(x)), y)`` on Q, back-propagated through the inner step (second order, the
     MAML default of learn2learn the official code uses) into theta, psi and the aggregator.

* Test time (:func:`adapt`): one inner step on the first unlabelled batch of a target domain with all N experts,
  then the adapted student predicts every example of that domain.

As in the official code, the student and the aggregator run in eval mode during meta-training (BatchNorm uses its
running statistics and dropout is off), the inner loss is a plain element-wise mean of squared differences, and the
head is never adapted (the inner loss does not reach it, so its inner gradient is zero).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distill.core.taps import FeatureTaps

#: the tap that gives a classifier's pooled penultimate feature (the input of its final linear layer)
FEATURE_TAP = "fc:input"


class FeatureAggregator(nn.Module):
    """One pre-norm transformer layer over expert tokens, mean-pooled: ``(B, N, D) -> (B, D)``.

    ``num_classes``: adds the pre-training head (LayerNorm + Linear), used by :meth:`classify` only."""

    def __init__(self, dim: int, heads: int = 4, hidden: int | None = None, dropout: float = 0.1,
                 num_classes: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"meta_dmoe: the feature width {dim} is not a multiple of heads={heads}")
        hidden = hidden or 2 * dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes)) if num_classes else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"meta_dmoe: expert tokens must be (batch, experts, dim), got {tuple(tokens.shape)}")
        h = self.norm1(tokens)
        x = tokens + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return (x + self.mlp(self.norm2(x))).mean(dim=1)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the pre-training head (the aggregator is pre-trained with the task loss on all experts)."""
        if self.head is None:
            raise ValueError("meta_dmoe: this aggregator has no pre-training head (num_classes was not given)")
        return self.head(self(tokens))


def drop_expert(tokens: torch.Tensor, expert: int | None) -> torch.Tensor:
    """The tokens without expert ``expert`` (the one trained on the batch's own domain), others in order; all of
    them when ``expert`` is None (test time, or the no-mask ablation)."""
    n = tokens.shape[1]
    if expert is None:
        return tokens
    if not 0 <= expert < n:
        raise ValueError(f"meta_dmoe: expert index {expert} outside 0..{n - 1}")
    if n < 2:
        raise ValueError("meta_dmoe: masking the domain's expert needs at least two experts")
    keep = [i for i in range(n) if i != expert]
    return tokens[:, keep]


@contextmanager
def _eval_mode(*modules: nn.Module):
    was = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


def features_and_logits(student: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                        tap: str = FEATURE_TAP) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's pooled feature (``tap``) and logits with its parameters replaced by ``params``."""
    buffers = dict(student.named_buffers())
    with FeatureTaps(student, [tap]).capture() as feats:
        logits = functional_call(student, (params, buffers), (x,))
    return feats[tap].flatten(1), logits


def inner_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The unsupervised distillation loss of the inner step: the element-wise mean of ``(phi(x) - t(x))^2``."""
    if features.shape != target.shape:
        raise ValueError(f"meta_dmoe: the student's feature {tuple(features.shape)} and the aggregated teacher "
                         f"feature {tuple(target.shape)} differ (the student's feature width must be D)")
    return (features - target).pow(2).mean()


def adapted_params(student: nn.Module, aggregator: FeatureAggregator, x: torch.Tensor, tokens: torch.Tensor,
                   inner_lr: float, *, create_graph: bool, tap: str = FEATURE_TAP) -> dict[str, torch.Tensor]:
    """``theta' = theta - inner_lr * grad_theta inner_loss(phi_theta(x), t(tokens))`` for every parameter the
    inner loss reaches (the others, e.g. the head, are returned unchanged). ``create_graph``: keep the graph of the
    step, so a loss on ``theta'`` reaches theta and the aggregator through it (second order)."""
    params = dict(student.named_parameters())
    feats, _ = features_and_logits(student, params, x, tap)
    loss = inner_loss(feats, aggregator(tokens))
    names = [k for k, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph, allow_unused=True)
    out = dict(params)
    for k, g in zip(names, grads):
        if g is not None:
            out[k] = params[k] - inner_lr * g
    return out


def meta_step(student: nn.Module, aggregator: FeatureAggregator, x: torch.Tensor, y: torch.Tensor,
              tokens: torch.Tensor, domain_expert: int | None, sup_size: int, inner_lr: float, *,
              first_order: bool = False, tap: str = FEATURE_TAP) -> torch.Tensor:
    """The outer loss of one meta-training batch from one source domain (call ``.backward()`` on it and step the
    student's and the aggregator's optimisers). ``x, y``: the batch (support first, ``sup_size`` rows);
    ``tokens``: the experts' features of ``x``, ``(B, N, D)``, computed without gradients; ``domain_expert``: the
    index of the expert of the batch's domain, masked out (None: no mask)."""
    if not 0 < sup_size < x.shape[0]:
        raise ValueError(f"meta_dmoe: sup_size={sup_size} must leave a non-empty support and query "
                         f"(batch of {x.shape[0]})")
    tokens = drop_expert(tokens.detach(), domain_expert)
    with _eval_mode(student, aggregator):
        fast = adapted_params(student, aggregator, x[:sup_size], tokens[:sup_size], inner_lr,
                              create_graph=not first_order, tap=tap)
        _, logits = features_and_logits(student, fast, x[sup_size:], tap)
    return F.cross_entropy(logits, y[sup_size:])


@torch.no_grad()
def _copy_into(student: nn.Module, params: dict[str, torch.Tensor]) -> None:
    for k, p in student.named_parameters():
        p.copy_(params[k])


def adapt(student: nn.Module, aggregator: FeatureAggregator, x: torch.Tensor, tokens: torch.Tensor,
          inner_lr: float, *, tap: str = FEATURE_TAP) -> nn.Module:
    """Test time: one unsupervised inner step on a target domain's unlabelled batch ``x`` (with all N experts'
    features ``tokens``) applied to a copy of ``student``, which is returned (the original is untouched)."""
    import copy

    adapted = copy.deepcopy(student)
    with _eval_mode(adapted, aggregator):
        fast = adapted_params(adapted, aggregator, x, tokens.detach(), inner_lr, create_graph=False, tap=tap)
    _copy_into(adapted, {k: v.detach() for k, v in fast.items()})
    return adapted


@torch.no_grad()
def expert_tokens(experts: list[nn.Module], x: torch.Tensor, tap: str = FEATURE_TAP) -> torch.Tensor:
    """The experts' pooled features of ``x`` as tokens ``(B, N, D)`` (eval mode, no gradients)."""
    out = []
    for e in experts:
        with _eval_mode(e), FeatureTaps(e, [tap]).capture() as feats:
            e(x)
        out.append(feats[tap].flatten(1))
    return torch.stack(out, dim=1)


def evaluate_adapted(student: nn.Module, aggregator: FeatureAggregator, batches: Callable[[], list],
                     inner_lr: float, sup_size: int, tap: str = FEATURE_TAP) -> float:
    """Accuracy on one target domain the way the official code measures it: adapt once on the domain's first
    ``sup_size`` images (unlabelled), then predict every example. ``batches()``: the domain's
    ``(x, y, tokens)`` batches in a fixed order."""
    data = batches()
    x0 = torch.cat([b[0] for b in data])[:sup_size]
    t0 = torch.cat([b[2] for b in data])[:sup_size]
    model = adapt(student, aggregator, x0, t0, inner_lr, tap=tap)
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y, _ in data:
            right += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    return right / max(total, 1)
