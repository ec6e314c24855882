"""DisWOT: ranking candidate students for a teacher without training, and a regularised-evolution search.

Paper: "DisWOT: Student Architecture Search for Distillation WithOut Training" (CVPR 2023); official code
lliai/DisWOT-CVPR2023 (README metric, ``distiller_zoo/{ICKD,SP}.py``, ``searcher/evo_search_*.py``), read through
the spec (../shared/methods/pipelines.md row 23); re-implemented here.

Both nets, the teacher included, are re-initialised: conv and linear weights ~ N(0, 1), biases 0, BN gamma 1,
beta 0 (BN in training mode, batch statistics). One labelled batch (B = 64) goes through each net with a
cross-entropy forward and backward.

* Relation metric (SP form): A in R^{B x C x H x W}, the last stage's output before global pooling, flattened to
  B x CHW; G = A A^T with each row L2-normalised to G^; ``M_r = ||G^_T - G^_S||_F^2 / B^2``.
* Semantic metric (ICKD form on the classifier gradient): g = dL/dW_fc in R^{K x D}; per class k,
  G_k = g_k g_k^T (D x D) with rows L2-normalised; ``M_s = sum_k ||G^_k^T - G^_k^S||_F^2 / (K D)`` (needs
  D_T = D_S).
* Score ``-(M_s + M_r)``: higher is better (the NB201 correlation script's sum; ``evo_search_zen`` uses only -M_r,
  ``evo_search_nb201`` only -M_s: ``metric`` picks).
* Search: regularised evolution (population 36, sample 8, 1000 cycles): sample 8 members, the best of the sample is
  the parent, mutate one choice, reject a child over the parameter budget, append it and drop the oldest. The
  official searcher sorts the sample ascending and picks at random among its first 5 (the worst): a quirk; the
  standard "best of sample" is implemented.

Space "S1": the CIFAR ResNet-20 family with per-stage depths d in {1, 3, 5, 7}^3 (64 architectures, widths
16/32/64; :class:`distill.models.CifarResNetDepths`); (3, 3, 3) is ResNet-20 and (7, 7, 7) ResNet-44.
Reconstructed (unverified in the code): which map counts as "before pooling" differs between scripts; the last
stage's output (``layer3``) is used.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.pipelines.stage import Artefact, StageContext, StageKind, StageOutput, register_stage_kind

__all__ = ["DisWOTOptions", "count_macs", "diswot_reinit", "evolve", "net_signals", "relation_metric",
           "s1_space", "score_candidates", "semantic_metric"]

Arch = tuple[int, ...]


def relation_metric(a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """M_r = ||rownorm(A_T A_T^T) - rownorm(A_S A_S^T)||_F^2 / B^2 (A flattened per sample)."""
    b = a_t.shape[0]
    g_t = F.normalize((lambda a: a @ a.T)(a_t.reshape(b, -1).double()), dim=1)
    g_s = F.normalize((lambda a: a @ a.T)(a_s.reshape(b, -1).double()), dim=1)
    return ((g_t - g_s) ** 2).sum() / (b * b)


def _class_grams(g: torch.Tensor) -> torch.Tensor:
    """K x D x D: per class k, g_k g_k^T with rows L2-normalised."""
    g = g.double()
    return F.normalize(g[:, :, None] * g[:, None, :], dim=2)


def semantic_metric(g_t: torch.Tensor, g_s: torch.Tensor) -> torch.Tensor:
    """M_s = sum_k ||rownorm(g_k^T g_k^T^T) - rownorm(g_k^S g_k^S^T)||_F^2 / (K D), g = dL/dW_fc (K x D)."""
    if g_t.shape != g_s.shape:
        raise ValueError(f"the semantic metric needs classifier gradients of one shape (K x D), got "
                         f"{tuple(g_t.shape)} and {tuple(g_s.shape)}: teacher and student need the same final width")
    k, d = g_t.shape
    return ((_class_grams(g_t) - _class_grams(g_s)) ** 2).sum() / (k * d)


@torch.no_grad()
def diswot_reinit(model: nn.Module, seed: int) -> nn.Module:
    """DisWOT's scoring initialisation: conv/linear weights N(0, 1), biases 0, BN gamma 1 and beta 0."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def net_signals(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tap: str = "layer3", fc: str = "linear"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, g): the output of module ``tap`` and dL/dW of module ``fc`` after one CE forward/backward (train-mode
    BN). The model's gradients are cleared afterwards."""
    mods = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handle = mods[tap].register_forward_hook(lambda m, i, o: captured.__setitem__("a", o.detach()))
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        F.cross_entropy(model(x), y).backward()
    finally:
        handle.remove()
    g = mods[fc].weight.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return captured["a"], g


def s1_space(choices: Sequence[int] = (1, 3, 5, 7)) -> list[Arch]:
    """The S1 space: every per-stage depth triple (64 with the default choices)."""
    return [tuple(a) for a in itertools.product(choices, repeat=3)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass (conv and linear layers)."""
    total = [0]

    def hook(m: nn.Module, i: Any, o: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            total[0] += o.numel() // o.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    model(torch.zeros(shape))
    model.train(was)
    for h in hs:
        h.remove()
    return total[0]


def score_candidates(teacher: nn.Module, build: Callable[[Arch], nn.Module], archs: Sequence[Arch],
                     x: torch.Tensor, y: torch.Tensor, seed: int, metric: str = "both",
                     reinit_teacher: bool = True, done: dict[Arch, dict[str, float]] | None = None,
                     every: Callable[[dict[Arch, dict[str, float]]], None] | None = None
                     ) -> dict[Arch, dict[str, float]]:
    """DisWOT scores of ``archs`` against ``teacher`` on one batch (each student re-initialised with ``seed``).
    ``done``: scores already computed (resume); ``every``: called after each new candidate (checkpointing)."""
    if reinit_teacher:
        diswot_reinit(teacher, seed)
    a_t, g_t = net_signals(teacher, x, y)
    out = dict(done or {})
    for arch in archs:
        if arch in out:
            continue
        student = diswot_reinit(build(arch), seed)
        a_s, g_s = net_signals(student, x, y)
        m_r = float(relation_metric(a_t, a_s))
        m_s = float(semantic_metric(g_t, g_s))
        score = -(m_s + m_r) if metric == "both" else (-m_r if metric == "relation" else -m_s)
        out[arch] = {"score": score, "m_s": m_s, "m_r": m_r, "params": count_params(student),
                     "macs": count_macs(student)}
        if every is not None:
            every(out)
    return out


def evolve(choices: Sequence[Sequence[int]], score: Callable[[Arch], float], cycles: int = 1000,
           population: int = 36, sample: int = 8, allowed: Callable[[Arch], bool] | None = None,
           seed: int = 0) -> tuple[Arch, float, list[Arch]]:
    """Regularised evolution (Real et al. 2019) over architectures ``a[i] in choices[i]``: returns (best seen,
    its score, history). A child that ``allowed`` rejects is redrawn (at most 100 times, then the cycle is
    skipped)."""
    rng = random.Random(seed)
    ok = allowed or (lambda a: True)

    def draw() -> Arch:
        for _ in range(1000):
            a = tuple(rng.choice(list(c)) for c in choices)
            if ok(a):
                return a
        raise ValueError("no architecture of the space satisfies the budget")

    pop: deque[tuple[Arch, float]] = deque()
    history: list[Arch] = []
    best: tuple[Arch, float] | None = None
    while len(pop) < population:
        a = draw()
        s = score(a)
        pop.append((a, s))
        history.append(a)
        best = (a, s) if best is None or s > best[1] else best
    for _ in range(cycles):
        parent = max(rng.sample(list(pop), min(sample, len(pop))), key=lambda t: t[1])[0]
        child = None
        for _ in range(100):
            pos = rng.randrange(len(choices))
            options = [c for c in choices[pos] if c != parent[pos]]
            if not options:
                continue
            cand = tuple(rng.choice(options) if i == pos else v for i, v in enumerate(parent))
            if ok(cand):
                child = cand
                break
        if child is None:
            continue
        s = score(child)
        pop.append((child, s))
        pop.popleft()
        history.append(child)
        if best is None or s > best[1]:
            best = (child, s)
    assert best is not None
    return best[0], best[1], history


# ---------------------------------------------------------------------------------------------------- stage kind


class DisWOTOptions(Strict):
    """``data``/``teacher``: the scoring batch's source and the teacher (``teacher.weights: random`` or
    ``reinit_teacher: true``, the paper's setting, ignore pretrained weights); ``choices``: per-stage depths;
    ``metric``: both (the sum), relation or semantic; ``max_params``: the search's budget (ResNet-20: 272474)."""

    data: dict[str, Any]
    teacher: dict[str, Any] = Field(default_factory=lambda: {"arch": "resnet56", "weights": "random"})
    reinit_teacher: bool = True
    batch_size: int = Field(64, gt=0)
    choices: list[int] = Field(default_factory=lambda: [1, 3, 5, 7], min_length=1)
    metric: Literal["both", "relation", "semantic"] = "both"
    population: int = Field(36, gt=0)
    sample: int = Field(8, gt=0)
    cycles: int = Field(1000, ge=0)
    max_params: int | None = Field(272474, gt=0)
    seed: int = 0


@register_stage_kind
class DisWOTSearch(StageKind):
    """Score every architecture of the S1 space without training, then search it with regularised evolution
    under the parameter budget. Output table ``ranking`` (``depths`` N x 3, ``score``, ``m_s``, ``m_r``,
    ``params``, ``macs``, best first); meta: the searched ``winner`` and ``student: {arch: resnet_depths,
    options: {depths}}`` (a downstream ``train`` stage's ``student`` input)."""

    name = "diswot_search"
    summary = "DisWOT training-free student scores over the CIFAR ResNet S1 space + regularised evolution"
    Options = DisWOTOptions

    def identity(self, ctx: StageContext, options: Any) -> dict[str, str]:
        from distill.pipelines.images import ImageSource, TeacherSpec, file_identity, source_identity

        out = source_identity(ctx, ImageSource.model_validate(options.data))
        w = TeacherSpec.model_validate(options.teacher).weights
        out["teacher#file"] = w if w == "random" else file_identity(w, ctx.base_dir)
        return out

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.models import MODELS
        from distill.pipelines.images import ImageSource, TeacherSpec, build_cifar_model, load_source, normalise

        src = ImageSource.model_validate(options.data)
        data, _ = load_source(ctx, src, "train")
        g = torch.Generator().manual_seed(options.seed)
        pick = torch.randperm(len(data), generator=g)[:options.batch_size]
        x, y = normalise(data.images[pick]), data.labels[pick]
        teacher = build_cifar_model(TeacherSpec.model_validate(options.teacher), ctx, data.num_classes)
        k = data.num_classes

        def build(arch: Arch) -> nn.Module:
            return MODELS["resnet_depths"](num_classes=k, depths=arch)

        state = ctx.load_state() or {}
        done = {tuple(int(v) for v in a.split("-")): s for a, s in state.get("scores", {}).items()}
        space = s1_space(options.choices)

        def save(scores: dict[Arch, dict[str, float]]) -> None:
            if len(scores) % 8 == 0 or len(scores) == len(space):
                ctx.save_state({"scores": {"-".join(map(str, a)): s for a, s in scores.items()}})

        scores = score_candidates(teacher, build, space, x, y, options.seed, options.metric,
                                  options.reinit_teacher, done, save)
        budget = options.max_params
        winner, best, history = evolve([options.choices] * 3, lambda a: scores[a]["score"], options.cycles,
                                       options.population, options.sample,
                                       (lambda a: scores[a]["params"] <= budget) if budget else None, options.seed)
        order = sorted(space, key=lambda a: -scores[a]["score"])
        ctx.log(f"[{ctx.name}] scored {len(space)} architectures; searched winner {winner} (score {best:.4g})")
        cols = {"depths": torch.tensor(order, dtype=torch.int64)}
        for key in ("score", "m_s", "m_r"):
            cols[key] = torch.tensor([scores[a][key] for a in order], dtype=torch.float64)
        for key in ("params", "macs"):
            cols[key] = torch.tensor([scores[a][key] for a in order], dtype=torch.int64)
        meta = {"winner": list(winner), "winner_score": best, "winner_params": scores[winner]["params"],
                "evaluated": len(set(history)), "top5": [list(a) for a in order[:5]],
                "student": {"arch": "resnet_depths", "options": {"depths": list(winner)}}}
        return StageOutput({"ranking": cols}, meta)
