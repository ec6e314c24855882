"""OnPro: online continual learning with prototypes (OPE, the online prototype equilibrium loss, and APF, adaptive
prototypical feedback), on OCM's rotation-augmented instance contrast, with a reservoir replay buffer.

Paper: Online Prototype Learning for Online Continual Learning, ICCV 2023, arXiv:2308.00301; code:
weilllllls/OnPro (``train.py``, ``modules/OPE.py``, ``modules/APF.py``, ``losses/loss.py``,
``utils/rotation_transform.py``), as summarised in the spec (pipelines.md, row 14). There is no teacher and no KD
term: OnPro is the prototype-based continual-learning baseline of the KD-based methods.

Formulas (z: L2-normalised projections; view 2 an augmented copy of view 1):

* OPE. For the K classes present, p_c^v = normalise(mean_{i: y_i = c} z_i^v); P = [p^1; p^2] (2K x d),
  s_ab = P_a . P_b / tau_p (row max subtracted, detached). With a+ the other view of a's class,
  L = -(1/2K) sum_a [ s_{a,a+} - log sum_{b != a} exp(s_ab) ].
  L_OPE = L(current batch, un-rotated) + L(buffer batch).  (:func:`ope_loss`)
* Instance loss (OCM). Each image x becomes rot90^k(x), k = 0..3, labelled y + C k (the code's 16 variants also
  apply 4 "inner" half-rotations; the spec's scaled demo keeps oop = 4, rot90 only); each variant is paired with its
  augmented view. S = lambda_sim (z z^T + z f_sl^T), f_sl a random contiguous slice (width d) of the normalised
  encoder feature; supervised NT-Xent at tau = 0.07 over the 2 x 4 B rows (self excluded, positives: same rotated
  label). Used for the current batch and for the buffer batch (the code's "uni" form for the buffer is replaced by
  the same supervised form: reconstructed).  (:func:`rotate`, :func:`ocm_similarity`, :func:`sup_nt_xent`)
* CE. Task 0: CE on the augmented current batch. Later tasks: CE only on the APF-mixed buffer batch,
  (1 - lambda) CE(z, y_a) + lambda CE(z, y_b).
* APF. Buffer batch B_b = min(buffer_batch, 7 #seen classes). The first floor(0.75 B_b) rows: random buffer rows,
  each mixed (probability 0.6) with a random partner at lambda ~ U[0, 0.6] (per-row draw: reconstructed). The rest:
  class pairs (i, j) drawn with probability softmax_{pairs}(1 / ||mu_i - mu_j||) (mu: the latest buffer prototypes,
  averaged over the two views), per-pair counts rounded with a largest-remainder fix-up so they sum exactly; one
  image per class, lambda ~ Beta(0.4, 0.4) with probability 0.6, else 0.  (:func:`pair_probabilities`,
  :func:`apportion`)
* Total: L = CE + L_ins + L_OPE (all weights 1). The first batch of each task skips the buffer terms; the batch is
  inserted into the reservoir after the step.

Baselines in the same learner (flags): ER (``use_instance=False, use_ope=False, use_apf=False``: CE on the current
batch + CE on a random buffer batch), OCM-lite (ER + instance loss: ``use_instance=True``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.core.registry import Provenance
from distill.streams.learners import ConvEncoder, Learner, TaskInfo, random_shift, register_learner


def ope_loss(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """The OPE contrastive loss between the class prototypes of two views (see the module docstring)."""
    classes = torch.unique(y)
    k = len(classes)
    if k < 1:
        return z1.sum() * 0.0
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    onehot = (y[None, :] == classes[:, None]).to(z1.dtype)  # (K, B)
    onehot = onehot / onehot.sum(dim=1, keepdim=True)
    p = F.normalize(torch.cat([onehot @ z1, onehot @ z2]), dim=1)  # (2K, d)
    s = p @ p.T / tau
    s = s - s.max(dim=1, keepdim=True).values.detach()
    eye = torch.eye(2 * k, dtype=torch.bool)
    positive = torch.cat([torch.arange(k, 2 * k), torch.arange(k)])
    log_den = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)
    return -(s[torch.arange(2 * k), positive] - log_den).mean()


def prototypes(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes present, their prototypes averaged over the two views, L2-normalised)."""
    classes = torch.unique(y)
    onehot = (y[None, :] == classes[:, None]).to(z1.dtype)
    onehot = onehot / onehot.sum(dim=1, keepdim=True)
    p1 = F.normalize(onehot @ F.normalize(z1, dim=1), dim=1)
    p2 = F.normalize(onehot @ F.normalize(z2, dim=1), dim=1)
    return classes, F.normalize((p1 + p2) / 2, dim=1)


def rotate(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 rot90 variants of every image (k-major: rows k B .. (k+1) B - 1 are rotated k times), labelled
    y + num_classes * k."""
    xs = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    ys = torch.cat([y + num_classes * k for k in range(4)])
    return xs, ys


def ocm_similarity(z: torch.Tensor, feat: torch.Tensor, offset: int, lam: float) -> torch.Tensor:
    """S = lam (z z^T + z f_sl^T), f_sl = normalise(feat)[:, offset:offset + d]."""
    d = z.shape[1]
    f = F.normalize(feat, dim=1)[:, offset:offset + d]
    return lam * (z @ z.T + z @ f.T)


def sup_nt_xent(sim: torch.Tensor, labels: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Supervised NT-Xent on a similarity matrix: -mean_a mean_{b in P(a)} log softmax_{b' != a}(sim_a / tau)_b,
    P(a) the other rows with a's label (rows without a positive are left out)."""
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    logits = (sim / tau).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    count = pos.sum(dim=1)
    keep = count > 0
    per_row = log_prob.masked_fill(~pos, 0.0).sum(dim=1)[keep] / count[keep]
    return -per_row.mean() if keep.any() else sim.sum() * 0.0


def pair_probabilities(protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All class pairs (i < j) of the K prototypes and their probabilities softmax(1 / ||mu_i - mu_j||)."""
    k = protos.shape[0]
    i, j = torch.triu_indices(k, k, offset=1)
    dist = (protos[i] - protos[j]).norm(dim=1).clamp_min(1e-8)
    return torch.stack([i, j], dim=1), torch.softmax(1.0 / dist, dim=0)


def apportion(probs: torch.Tensor, n: int) -> torch.Tensor:
    """Integer counts close to n * probs that sum to exactly n (largest remainder)."""
    raw = probs.double() * n
    counts = raw.floor().long()
    rest = n - int(counts.sum())
    if rest > 0:
        order = torch.argsort(raw - counts, descending=True, stable=True)
        counts[order[:rest]] += 1
    return counts


@register_learner("onpro")
class OnPro(Learner):
    """See the module docstring. ``buffer_size`` rows of reservoir replay; ``proj_dim`` the projection width."""

    provenance = Provenance("Online Prototype Learning for Online Continual Learning", 2023, "2308.00301",
                            "https://github.com/weilllllls/OnPro", "ICCV")

    @classmethod
    def check_data(cls, options: dict[str, Any], dataset: Any) -> None:
        """The replay buffer holds images of ``image_size`` x ``image_size``: it must be the dataset's."""
        size = int(options.get("image_size", 8))
        h, w = (int(v) for v in dataset.x_train.shape[-2:])
        if (h, w) != (size, size):
            raise ValueError(f"learner.options.image_size: {size} (the replay buffer's image side), but the images "
                             f"of stream.dataset {dataset.name!r} are {h} x {w}; set image_size: {h}")

    def __init__(self, num_classes: int, channels: int, width: int = 32, feature_dim: int = 64, proj_dim: int = 64,
                 buffer_size: int = 200, buffer_batch: int = 32, image_size: int = 8, tau_proto: float = 0.5,
                 tau_instance: float = 0.07, lambda_sim: float = 0.5, mixup_base_rate: float = 0.75,
                 mixup_p: float = 0.6, mixup_alpha: float = 0.4, use_instance: bool = True, use_ope: bool = True,
                 use_apf: bool = True) -> None:
        super().__init__(num_classes, channels)
        self.encoder = ConvEncoder(channels, width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.projector = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(),
                                       nn.Linear(feature_dim, proj_dim))
        self.proj_dim, self.feature_dim = proj_dim, feature_dim
        self.buffer_batch, self.tau_proto, self.tau_instance = buffer_batch, tau_proto, tau_instance
        self.lambda_sim, self.mixup_base_rate, self.mixup_p, self.mixup_alpha = (lambda_sim, mixup_base_rate,
                                                                                  mixup_p, mixup_alpha)
        self.use_instance, self.use_ope, self.use_apf = use_instance, use_ope, use_apf
        self.register_buffer("buf_x", torch.zeros(buffer_size, channels, image_size, image_size))
        self.register_buffer("buf_y", torch.full((buffer_size,), -1, dtype=torch.long))
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("protos", torch.zeros(num_classes, proj_dim))
        self.register_buffer("proto_valid", torch.zeros(num_classes, dtype=torch.bool))

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        self.task_step.zero_()

    # ---- pieces ----------------------------------------------------------------------------------------------
    def augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The second view: a random +-1 pixel shift and, for colour images, grayscale with probability 0.25 (the
        code's random-resized crop and flip do not suit 8x8 digits; reconstructed for small images)."""
        out = random_shift(x, g)
        if x.shape[1] > 1:
            gray = torch.rand(len(x), generator=g) < 0.25
            out = torch.where(gray[:, None, None, None], out.mean(1, keepdim=True).expand_as(out), out)
        return out

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder(x)
        return f, F.normalize(self.projector(f), dim=1)

    def instance_and_ope(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(instance loss, OPE loss, z1 and z2 of the un-rotated rows) of one batch."""
        b = len(x)
        xr, yr = rotate(x, y, self.num_classes) if self.use_instance else (x, y)
        f1, z1 = self.project(xr)
        f2, z2 = self.project(self.augment(xr, g))
        zero = z1.sum() * 0.0
        ins = zero
        if self.use_instance:
            offset = int(torch.randint(0, self.feature_dim - self.proj_dim + 1, (1,), generator=g)) \
                if self.feature_dim >= self.proj_dim else 0
            z, f = torch.cat([z1, z2]), torch.cat([f1, f2])
            if self.feature_dim < self.proj_dim:
                f = F.pad(f, (0, self.proj_dim - self.feature_dim))
            ins = sup_nt_xent(ocm_similarity(z, f, offset, self.lambda_sim), torch.cat([yr, yr]), self.tau_instance)
        ope = ope_loss(z1[:b], z2[:b], y, self.tau_proto) if self.use_ope else zero
        return ins, ope, z1[:b], z2[:b]

    def buffer_rows(self) -> int:
        return int(min(self.n_seen, self.buf_y.shape[0]))

    def apf_batch(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y_a, y_b, lambda) of n APF rows (see the module docstring)."""
        m = self.buffer_rows()
        npg = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        valid = torch.nonzero(self.proto_valid, as_tuple=True)[0]
        present = torch.unique(self.buf_y[:m])
        valid = valid[torch.isin(valid, present)]
        n_random = int(math.floor(self.mixup_base_rate * n)) if len(valid) >= 2 and self.use_apf else n
        idx = torch.randint(0, m, (n_random,), generator=g)
        partner = torch.randint(0, m, (n_random,), generator=g)
        apply = torch.rand(n_random, generator=g) < self.mixup_p
        lam = torch.where(apply, torch.rand(n_random, generator=g) * 0.6, torch.zeros(n_random))
        xs = [(1 - lam)[:, None, None, None] * self.buf_x[idx] + lam[:, None, None, None] * self.buf_x[partner]]
        ya, yb, lams = [self.buf_y[idx]], [self.buf_y[partner]], [lam]
        rest = n - n_random
        if rest > 0:
            pairs, probs = pair_probabilities(self.protos[valid])
            counts = apportion(probs, rest)
            for (i, j), c in zip(pairs.tolist(), counts.tolist(), strict=True):
                for _ in range(c):
                    ci, cj = valid[i], valid[j]
                    rows_i = torch.nonzero(self.buf_y[:m] == ci, as_tuple=True)[0]
                    rows_j = torch.nonzero(self.buf_y[:m] == cj, as_tuple=True)[0]
                    a = rows_i[torch.randint(0, len(rows_i), (1,), generator=g)]
                    bb = rows_j[torch.randint(0, len(rows_j), (1,), generator=g)]
                    lm = float(npg.beta(self.mixup_alpha, self.mixup_alpha)) if npg.random() < self.mixup_p else 0.0
                    xs.append((1 - lm) * self.buf_x[a] + lm * self.buf_x[bb])
                    ya.append(self.buf_y[a])
                    yb.append(self.buf_y[bb])
                    lams.append(torch.tensor([lm]))
        return torch.cat(xs), torch.cat(ya), torch.cat(yb), torch.cat(lams)

    # ---- the step --------------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        assert self.task is not None
        g = generator
        terms: dict[str, torch.Tensor] = {}
        ins, ope, _, _ = self.instance_and_ope(x, y, g)
        if self.use_instance:
            terms["instance"] = ins
        if self.use_ope:
            terms["ope"] = ope
        use_buffer = self.buffer_rows() > 0 and int(self.task_step) > 0
        if not (self.use_apf and self.task.index > 0 and use_buffer):
            terms["ce"] = F.cross_entropy(self.head(self.encoder(self.augment(x, g))), y)
        if not use_buffer:
            return terms
        m = self.buffer_rows()
        n_b = min(self.buffer_batch, 7 * len(self.task.seen))
        rows = torch.randint(0, m, (n_b,), generator=g)
        bx, by = self.buf_x[rows], self.buf_y[rows]
        if self.use_instance or self.use_ope:
            bins, bope, bz1, bz2 = self.instance_and_ope(bx, by, g)
            if self.use_instance:
                terms["instance_buffer"] = bins
            if self.use_ope:
                terms["ope_buffer"] = bope
                with torch.no_grad():
                    classes, p = prototypes(bz1.detach(), bz2.detach(), by)
                    self.protos[classes] = p
                    self.proto_valid[classes] = True
        if self.use_apf and self.task.index == 0:
            return terms  # OnPro's task 0: CE on the current batch only; the buffer feeds the contrastive terms
        if self.use_apf:
            mx, ya, yb, lam = self.apf_batch(n_b, g)
            logits = self.head(self.encoder(mx))
            ce = (1 - lam) * F.cross_entropy(logits, ya, reduction="none") + lam * F.cross_entropy(
                logits, yb, reduction="none")
            terms["ce_buffer"] = ce.mean()
        else:
            terms["ce_buffer"] = F.cross_entropy(self.head(self.encoder(self.augment(bx, g))), by)
        return terms

    @torch.no_grad()
    def after_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """Reservoir insertion of the batch (Vitter's algorithm R), then the task's step count."""
        size = self.buf_y.shape[0]
        for i in range(len(x)):
            n = int(self.n_seen)
            j = n if n < size else int(torch.randint(0, n + 1, (1,), generator=generator))
            if j < size:
                self.buf_x[j] = x[i]
                self.buf_y[j] = y[i]
            self.n_seen += 1
        self.task_step += 1

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
