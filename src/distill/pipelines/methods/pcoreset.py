"""PCoreSet: active learning by coverage of the probability simplex, inside an ActiveKD loop.

Paper: "PCoreSet: Effective Active Learning through Knowledge Distillation from Vision-Language Models" (2025,
arXiv 2506.00910); official code erjui/PCoreSet (``strategies.py``, ``train_active_others.py``), read through the
spec (docs: ../shared/methods/pipelines.md row 35); re-implemented here.

ActiveKD round r (labelled set L_r, unlabelled pool U_r, teacher logits z_T cached for every pool image):

* Student (DHO, dual head): backbone features h, heads z_ce = W_ce h and z_kd = W_kd h, re-initialised every round.
  Prediction p = (1 - alpha) softmax(z_ce) + alpha softmax(z_kd / beta), alpha = 0.5, beta = 1.
* Loss per step, a labelled batch (x_L, y) paired with an unlabelled batch x_U:
  ``0.5 CE(z_ce(x_L), y) + 0.5 [T^2 KL(softmax(z_T(x_L)/T) || softmax(z_kd(x_L)/T))
  + T^2 KL(softmax(z_T(x_U)/T) || softmax(z_kd(x_U)/T))]`` (batchmean, T = 2).
* Selection of q new labels:
  - **pcoreset**: centres C = {p(x) : x in L_r} (the *student's* probabilities on the labelled set, as in the
    code); q times: x* = argmax_{x in U} min_{c in C} ||p(x) - c||_2, add p(x*) to C (greedy k-center, L2 in the
    probability simplex);
  - **coreset**: the same greedy k-center on L2-normalised features h with distance 1 - cos;
  - **entropy**: the q largest H(p(x)) = -sum_k p_k log p_k;
  - **random**: q uniformly drawn pool images.
  Selection features and probabilities come from un-augmented images (the code's validation transform).
  ``space: teacher`` uses the teacher's softmax instead of the student's p (the paper's wording; off by default).

Adaptation here (spec F0/row 35, *reconstructed* where marked): a CIFAR ResNet stands in for the VLM teacher
(its cached logits for the image and its horizontal flip replace the online teacher on augmented batches); the
student is a small CNN (conv 32-64-128 + global average pooling, two heads) trained from scratch each round with
AdamW (lr 1e-3, linear schedule with 10 % warm-up) for a fixed number of steps per round (the code: 200 passes
over L with replacement; here ``steps``, equal for every strategy); flips are the only augmentation.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.pipelines.stage import Artefact, StageContext, StageKind, StageOutput, register_stage_kind

__all__ = ["DualHeadCNN", "PCoreSetOptions", "active_kd", "coreset_select", "dho_loss", "dho_predict",
           "entropy_select", "pcoreset_select", "random_select"]


# ----------------------------------------------------------------------------------------------------- selection


def greedy_k_center(pool: torch.Tensor, centres: torch.Tensor, q: int, distance: str = "l2") -> torch.Tensor:
    """Indices (into ``pool``) of ``q`` points chosen greedily: each is the pool point farthest from its nearest
    centre, then becomes a centre. ``distance``: ``l2`` or ``cosine`` (1 - cos of the L2-normalised vectors).
    A chosen point is at distance 0 from itself afterwards, so it is never chosen twice."""
    if q > len(pool):
        raise ValueError(f"cannot select {q} points from a pool of {len(pool)}")
    pool = pool.double()
    if distance == "cosine":
        pool = F.normalize(pool, dim=1)
        centres = F.normalize(centres.double(), dim=1)

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if distance == "cosine":
            return 1.0 - a @ b.T
        return torch.cdist(a, b)

    nearest = (dist(pool, centres.double()).min(1).values if len(centres)
               else torch.full((len(pool),), math.inf, dtype=torch.float64))
    chosen: list[int] = []
    taken = torch.zeros(len(pool), dtype=torch.bool)
    for _ in range(q):
        score = nearest.masked_fill(taken, -math.inf)
        i = int(score.argmax())
        chosen.append(i)
        taken[i] = True
        nearest = torch.minimum(nearest, dist(pool, pool[i:i + 1]).squeeze(1))
    return torch.tensor(chosen, dtype=torch.int64)


def pcoreset_select(pool_probs: torch.Tensor, labelled_probs: torch.Tensor, q: int) -> torch.Tensor:
    """PCoreSet: greedy k-center with L2 distance in probability space, centres = ``labelled_probs``."""
    return greedy_k_center(pool_probs, labelled_probs, q, "l2")


def coreset_select(pool_feats: torch.Tensor, labelled_feats: torch.Tensor, q: int) -> torch.Tensor:
    """Feature coreset baseline: greedy k-center with 1 - cos distance on L2-normalised features."""
    return greedy_k_center(pool_feats, labelled_feats, q, "cosine")


def entropy_select(pool_probs: torch.Tensor, q: int) -> torch.Tensor:
    """Uncertainty baseline: the ``q`` pool points of largest entropy of p (ties: lowest index first)."""
    p = pool_probs.double().clamp_min(1e-12)
    h = -(p * p.log()).sum(1)
    return torch.sort(h, descending=True, stable=True).indices[:q]


def random_select(n: int, q: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)[:q]


# ------------------------------------------------------------------------------------------------ student (DHO)


class DualHeadCNN(nn.Module):
    """conv(3x3)-BN-ReLU-maxpool blocks of ``widths`` channels, global average pooling, two linear heads:
    ``forward`` returns (z_ce, z_kd, h)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.ce_head = nn.Linear(c, num_classes)
        self.kd_head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(x).mean((2, 3))
        return self.ce_head(h), self.kd_head(h), h


def dho_predict(z_ce: torch.Tensor, z_kd: torch.Tensor, alpha: float = 0.5, beta: float = 1.0) -> torch.Tensor:
    """p = (1 - alpha) softmax(z_ce) + alpha softmax(z_kd / beta)."""
    return (1 - alpha) * z_ce.softmax(-1) + alpha * (z_kd / beta).softmax(-1)


def _kl(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


def dho_loss(z_ce_l: torch.Tensor, y: torch.Tensor, z_kd_l: torch.Tensor, t_l: torch.Tensor,
             z_kd_u: torch.Tensor | None = None, t_u: torch.Tensor | None = None, temperature: float = 2.0
             ) -> torch.Tensor:
    """0.5 CE(z_ce_l, y) + 0.5 [T^2 KL(t_l || kd_l) + T^2 KL(t_u || kd_u)] (batchmean)."""
    kd = _kl(t_l, z_kd_l, temperature)
    if z_kd_u is not None and t_u is not None and len(z_kd_u):
        kd = kd + _kl(t_u, z_kd_u, temperature)
    return 0.5 * F.cross_entropy(z_ce_l, y) + 0.5 * kd


# -------------------------------------------------------------------------------------------------- the AL loop


class PCoreSetOptions(Strict):
    strategy: Literal["pcoreset", "coreset", "entropy", "random"] = "pcoreset"
    #: whose probabilities PCoreSet and entropy use: the distilled ``student``'s p (the official code) or the
    #: ``teacher``'s softmax (the paper's wording)
    space: Literal["student", "teacher"] = "student"
    initial_per_class: int = Field(1, gt=0)
    rounds: int = Field(8, ge=0)
    per_round: int = Field(10, gt=0)
    steps: int = Field(200, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    alpha: float = Field(0.5, ge=0, le=1)
    beta: float = Field(1.0, gt=0)
    temperature: float = Field(2.0, gt=0)
    seed: int = 0


@torch.no_grad()
def _pool_outputs(model: DualHeadCNN, x: torch.Tensor, o: PCoreSetOptions, bs: int = 500
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    probs, feats = [], []
    for i in range(0, len(x), bs):
        z_ce, z_kd, h = model(x[i:i + bs])
        probs.append(dho_predict(z_ce, z_kd, o.alpha, o.beta))
        feats.append(h)
    return torch.cat(probs), torch.cat(feats)


def train_round(x: torch.Tensor, labels: torch.Tensor, t_logits: torch.Tensor, labelled: torch.Tensor,
                unlabelled: torch.Tensor, num_classes: int, o: PCoreSetOptions, seed: int) -> DualHeadCNN:
    """A fresh DHO student trained ``o.steps`` steps: labelled batches drawn with replacement, each paired with
    an unlabelled batch; a random horizontal flip per image, with the teacher's logits of that flip."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DualHeadCNN(num_classes, tuple(o.widths))
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    warm = max(1, int(o.warmup * o.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (o.steps - s) / max(1, o.steps - warm)))
    model.train()
    for _ in range(o.steps):
        li = labelled[torch.randint(len(labelled), (o.batch_size,), generator=g)]
        ui = (unlabelled[torch.randint(len(unlabelled), (o.batch_size,), generator=g)] if len(unlabelled)
              else li[:0])
        idx = torch.cat([li, ui])
        flip = torch.randint(2, (len(idx),), generator=g)
        xb = torch.where(flip.view(-1, 1, 1, 1).bool(), x[idx].flip(3), x[idx])
        tb = t_logits[idx, flip]
        z_ce, z_kd, _ = model(xb)
        n = len(li)
        loss = dho_loss(z_ce[:n], labels[li], z_kd[:n], tb[:n], z_kd[n:], tb[n:], o.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def initial_labelled(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in labels.unique().tolist():
        members = (labels == k).nonzero().flatten()
        out.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(out).sort().values


def active_kd(x: torch.Tensor, labels: torch.Tensor, t_logits: torch.Tensor, x_test: torch.Tensor,
              y_test: torch.Tensor, o: PCoreSetOptions, ctx: StageContext | None = None) -> dict[str, Any]:
    """The ActiveKD loop: train, evaluate p on the test set, select ``o.per_round`` with ``o.strategy``; repeated
    ``o.rounds`` times plus a final training. ``x``: normalised pool images; ``t_logits``: N x 2 x K (image,
    flip). With ``ctx`` the state is checkpointed after every round and an interrupted loop resumes from it.
    Returns ``labelled`` (pool positions), ``round_of`` (the round each was labelled in) and ``accuracy``."""
    num_classes = int(t_logits.shape[-1])
    state = ctx.load_state() if ctx is not None else None
    if state is None:
        lab = initial_labelled(labels, o.initial_per_class, o.seed)
        state = {"round": 0, "labelled": lab, "round_of": torch.zeros(len(lab), dtype=torch.int64),
                 "accuracy": []}
    while state["round"] <= o.rounds:
        r = int(state["round"])
        lab = state["labelled"]
        mask = torch.ones(len(x), dtype=torch.bool)
        mask[lab] = False
        unl = mask.nonzero().flatten()
        model = train_round(x, labels, t_logits, lab, unl, num_classes, o, seed=o.seed * 100003 + r)
        p_test, _ = _pool_outputs(model, x_test, o)
        acc = float((p_test.argmax(1) == y_test).float().mean())
        if ctx is not None:
            ctx.log(f"[{ctx.name}] round {r}: {len(lab)} labels, test accuracy {acc:.4f}")
        new = torch.zeros(0, dtype=torch.int64)
        if r < o.rounds:
            if o.strategy == "random":
                pick = random_select(len(unl), o.per_round, torch.Generator().manual_seed(o.seed * 7919 + r))
            else:
                probs, feats = _pool_outputs(model, x, o)
                if o.space == "teacher":
                    probs = t_logits[:, 0].double().softmax(-1)
                if o.strategy == "pcoreset":
                    pick = pcoreset_select(probs[unl], probs[lab], o.per_round)
                elif o.strategy == "coreset":
                    pick = coreset_select(feats[unl], feats[lab], o.per_round)
                else:
                    pick = entropy_select(probs[unl], o.per_round)
            new = unl[pick]
        state = {"round": r + 1, "labelled": torch.cat([lab, new]),
                 "round_of": torch.cat([state["round_of"], torch.full((len(new),), r + 1, dtype=torch.int64)]),
                 "accuracy": [*state["accuracy"], acc]}
        if ctx is not None:
            ctx.save_state(state)
    return state


class PCoreSetStageOptions(PCoreSetOptions):
    """:class:`PCoreSetOptions`; the data and teacher logits come from the ``teacher`` input (a
    ``teacher_logits`` stage)."""


@register_stage_kind
class PCoreSetSelect(StageKind):
    """ActiveKD with a selection strategy (PCoreSet or a baseline). Input ``teacher``: a ``teacher_logits``
    stage (pool and test logits, the data source in its meta). Output tables: ``selection`` (``index`` into the
    full train split, ``label``, ``round``, the teacher's ``soft_label`` probabilities) and ``curve`` (``round``,
    ``labels``, ``accuracy``); meta: the accuracies, their mean (area under the curve / rounds) and the strategy."""

    name = "pcoreset_select"
    summary = "PCoreSet (or random / entropy / coreset) active selection with a dual-head student, per round"
    Options = PCoreSetStageOptions
    inputs = {"teacher": "a teacher_logits stage (tables pool and test)"}

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.pipelines.images import ImageSource, load_source, normalise

        teacher = inputs["teacher"]
        src = ImageSource.model_validate(teacher.meta["data"])
        pool_t, test_t = teacher.table("pool"), teacher.table("test")
        pool, pool_idx = load_source(ctx, src, "train")
        test, test_idx = load_source(ctx, src, "test")
        if not (torch.equal(pool_idx, pool_t["index"]) and torch.equal(test_idx, test_t["index"])):
            raise ValueError(f"stage {ctx.name!r}: the data no longer matches the teacher stage's indices")
        state = active_kd(normalise(pool.images), pool.labels, pool_t["logits"].float(), normalise(test.images),
                          test.labels, options, ctx)
        lab = state["labelled"]
        accs = [round(a, 4) for a in state["accuracy"]]
        sizes = [int((state["round_of"] <= r).sum()) for r in range(len(accs))]
        meta = {"strategy": options.strategy, "accuracy": accs, "labels": sizes,
                "mean_accuracy": round(sum(accs) / len(accs), 4), "teacher_test_accuracy": teacher.meta.get(
                    "test_accuracy")}
        return StageOutput({
            "selection": {"index": pool_idx[lab], "label": pool.labels[lab], "round": state["round_of"],
                          "soft_label": pool_t["logits"][lab, 0].float().softmax(-1)},
            "curve": {"round": torch.arange(len(accs)), "labels": torch.tensor(sizes),
                      "accuracy": torch.tensor(state["accuracy"], dtype=torch.float32)},
        }, meta)
