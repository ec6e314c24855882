"""A mixture of teachers: several teacher sources, and per example one of them (or a learned blend of them).

Three ways to combine the members (``route``):

* ``column``: each example names its member in a field of the data (a domain or task column). The field travels
  in the batch as ``batch.meta["route"]`` (a long tensor, one member index per example); each member runs only on
  the rows routed to it, and its outputs are put back in their rows. Nothing is learned.
* ``learned``: a small router (:class:`Router`) scores the members per example and the example takes the top-1
  member (the instance-level gate of MST-Distill, Li et al., ACM MM 2025). The value is exactly that member's output;
  the gradient reaches the router by the straight-through estimator ``out = z_top + sum_j (g_j - sg(g_j)) z_j``
  (g: the router's softmax over members; ``sg``: stop-gradient), and, when ``balance > 0``, through MST-Distill's
  load-balance term ``KL(u || mean_batch(g))`` (u uniform over the members), which the training module adds to the
  loss as ``teacher.balance``. (MST-Distill's own code trains its gate only through that term, since top-k is not
  differentiable; the straight-through term is our addition, so that the distillation loss also teaches the gate.)
* ``aggregate``: per-example softmax weights over the members, learned, and the output is the weighted mean of
  the members' logits (``reduce: logits``) or the log of the weighted mean of their probabilities
  (``reduce: probs``) -- the learned aggregator of Meta-DMoE (Zhong et al., NeurIPS 2022), here over outputs
  (their features are blended the same way when a method asks for teacher features).

The router reads the members' outputs (``router_input="teachers"``: each member's log-softmax, mean-pooled over
positions, concatenated) or the student's output (``"student"``, detached: the router learns from the teacher side
only; MST-Distill's gate reads the student's logits). Members never get gradients: they are frozen models or
caches run under ``torch.no_grad``; only the router is trained, as part of the method parameters the optimiser
sees (:class:`distill.train.module.DistillModule` registers :attr:`MixtureTeacher.trainable` with the methods,
so it is also checkpointed and resumed with them).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.errors import ConfigError
from distill.core.outputs import ModelOutput
from distill.core.teachers import FrozenTeacher, RunsModels
from distill.core.topk import TopKLogits

ROUTES = ("column", "learned", "aggregate")
ROUTER_INPUTS = ("teachers", "student")
#: where a batch carries each example's member index (route: column)
ROUTE_KEY = "route"


def allowed_routes(names: Sequence[str | None]) -> str:
    """The values a route may take, for error messages: the members' names and their indices."""
    given = [n for n in names if n]
    idx = f"0..{len(names) - 1}" if len(names) > 1 else "0"
    return f"{', '.join(given)} (or an index {idx})" if given else f"an index {idx}"


def route_indices(values: Any, names: Sequence[str | None], key: str) -> torch.Tensor:
    """Route values (member names or indices; a list, numpy array or tensor) as a long tensor of member indices.
    A value that names no member is a :class:`ConfigError` naming ``key``, the example and the allowed values."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=object).reshape(-1) if not isinstance(values, np.ndarray) else values.reshape(-1)
    lookup = {n: i for i, n in enumerate(names) if n}
    out = np.empty(len(arr), dtype=np.int64)
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str) and v in lookup:
            out[i] = lookup[v]
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= int(v) < len(names):
            out[i] = int(v)
        elif isinstance(v, float) and v.is_integer() and 0 <= int(v) < len(names):
            out[i] = int(v)
        else:
            raise ConfigError(f"{key}: example {i} is routed to {v!r}, which names no member of teacher.mixture; "
                              f"allowed: {allowed_routes(names)}")
    return torch.from_numpy(out)


class Router(nn.Module):
    """Member scores from one feature vector per example: LayerNorm -> Linear -> ReLU -> Linear (``hidden``
    units). The LayerNorm keeps the scores in range whatever the scale of the logits it reads (a saturated gate
    stops learning)."""

    def __init__(self, in_features: int, num_members: int, hidden: int = 64):
        super().__init__()
        if in_features < 1 or num_members < 2 or hidden < 1:
            raise ValueError(f"a router needs in_features >= 1, hidden >= 1 and >= 2 members, got {in_features}, "
                             f"{hidden}, {num_members}")
        self.net = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _per_example(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B, C) from (B, C) or (B, ..., C) outputs: log-softmax, mean over positions (the batch's attention mask
    weights them when it has one of shape (B, L), as causal-LM batches do)."""
    x = torch.log_softmax(logits.float(), dim=-1)
    x = torch.nan_to_num(x, neginf=0.0, posinf=0.0)  # vocabulary columns a model cannot produce (-inf)
    if x.ndim == 2:
        return x
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    mask = batch.inputs.get("attention_mask") if isinstance(batch.inputs, dict) else None
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(x.shape[:2]):
        w = mask.to(x.dtype).unsqueeze(-1)
        return (x * w).sum(1) / w.sum(1).clamp_min(1.0)
    return x.mean(1)


def _device_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)):
            return a
    return None


class MixtureTeacher:
    """Several teacher sources combined per example (see the module docstring).

    ``members``: teacher sources (a frozen model's :class:`FrozenTeacher`, a teacher cache, ...) or ``nn.Module``
    (frozen here); ``names``: optional member names (what a route column may hold besides indices); ``route``:
    ``column``, ``learned`` or ``aggregate``; ``router``: the router of the learned routes (default: a
    :class:`Router` over ``router_input`` of width ``num_outputs`` per member); ``balance``: the weight of the
    load-balance term (learned routes).
    """

    def __init__(self, members: Sequence[Any], names: Sequence[str | None] | None = None, route: str = "column",
                 *, router: nn.Module | None = None, router_input: str = "teachers", num_outputs: int | None = None,
                 hidden: int = 64, balance: float = 0.0, reduce: str = "logits"):
        if len(members) < 2:
            raise ValueError(f"a mixture needs at least two members, got {len(members)}")
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
        if router_input not in ROUTER_INPUTS:
            raise ValueError(f"router_input must be one of {', '.join(ROUTER_INPUTS)}, got {router_input!r}")
        if reduce not in ("logits", "probs"):
            raise ValueError(f"reduce must be 'logits' or 'probs', got {reduce!r}")
        if not (balance >= 0 and math.isfinite(balance)):
            raise ValueError(f"balance must be a finite number >= 0, got {balance}")
        self.members = [FrozenTeacher(m) if isinstance(m, nn.Module) else m for m in members]
        self.names = list(names) if names is not None else [None] * len(members)
        if len(self.names) != len(self.members):
            raise ValueError(f"{len(self.names)} names for {len(self.members)} members")
        self.route = route
        self.router_input = router_input
        self.balance = float(balance)
        self.reduce = reduce
        self.router: nn.Module | None = None
        if route != "column":
            if router is None:
                if num_outputs is None:
                    raise ValueError("a learned route needs the router or num_outputs (the output width)")
                width = num_outputs * (len(members) if router_input == "teachers" else 1)
                router = Router(width, len(members), hidden)
            self.router = router
        #: loss terms of the last call (the load-balance term), taken by the training module
        self.pending_terms: dict[str, torch.Tensor] = {}
        #: examples routed to each member since the last :meth:`reset_counts` (learned and column routes)
        self.counts = torch.zeros(len(members), dtype=torch.long)

    def with_members(self, members: Sequence[Any]) -> MixtureTeacher:
        """The same mixture (names, route, the same router object) over other sources of its members (their
        caches)."""
        import copy

        out = copy.copy(self)
        out.members = list(members)
        out.pending_terms = {}
        out.counts = torch.zeros(len(members), dtype=torch.long)
        return out

    # -- what the training module reads ---------------------------------------------------------------------------
    @property
    def trainable(self) -> nn.Module | None:
        """The router (trained with the methods), or None for column routing."""
        return self.router

    @property
    def reads_student(self) -> bool:
        """Whether a call needs the student's output of the batch (``student=``)."""
        return self.router is not None and self.router_input == "student"

    @property
    def evaluable(self) -> bool:
        """Whether the mixture can be run on evaluation inputs alone (no route column, no student)."""
        return self.route != "column" and not self.reads_student

    def set_precision(self, precision: str) -> None:
        """``teacher.precision``: cast every (live) member; the router stays float32 (it is trained)."""
        for m in self.members:
            setter = getattr(m, "set_precision", None)
            if setter is None:
                raise ValueError(f"a mixture member is a {type(m).__name__}, not a live model whose weights can be "
                                 "cast")
            setter(precision)

    def take_terms(self) -> dict[str, torch.Tensor]:
        terms, self.pending_terms = self.pending_terms, {}
        return terms

    def reset_counts(self) -> None:
        self.counts.zero_()

    def fingerprint_parts(self) -> tuple[str, list[Any]]:
        """What a cache of this source depends on besides its members' weights (and the data, which holds the
        route column): the way members are combined."""
        label = f"mixture:{self.route}:{self.reduce}:{self.names}"
        if self.router is not None:  # a learned router is never cached (it changes), but say what it is
            h = hashlib.sha256()
            for k, v in sorted(self.router.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().float().numpy().tobytes())
            label += f":router:{h.hexdigest()}"
        return label, list(self.members)

    def identity(self) -> str:
        """What the source serves (part of a checkpoint's recipe): the route and the members' own identities."""
        parts = [self.route, self.reduce, *[str(n) for n in self.names]]
        for m in self.members:
            ident = getattr(m, "identity", None)
            parts.append(ident() if callable(ident) else type(m).__name__)
        return "mixture:" + hashlib.sha256("|".join(parts).encode()).hexdigest()

    def to(self, *args: Any, **kwargs: Any) -> MixtureTeacher:
        for m in self.members:
            m.to(*args, **kwargs)
        device = _device_of(args, kwargs)
        if self.router is not None and device is not None:  # the router's dtype is the optimiser's business
            self.router.to(device)
        return self

    # -- outputs --------------------------------------------------------------------------------------------------
    def routes_of(self, batch: Batch) -> torch.Tensor:
        """The batch's member index per example (route: column), checked."""
        route = batch.meta.get(ROUTE_KEY)
        if route is None:
            raise ValueError("teacher.mixture: route: column needs each example's member in batch.meta['route'] "
                             "(the data's route column); this batch has none")
        route = torch.as_tensor(route).long()
        if route.shape != (len(batch),):
            raise ValueError(f"teacher.mixture: batch.meta['route'] has shape {tuple(route.shape)}, expected "
                             f"({len(batch)},)")
        bad = (route < 0) | (route >= len(self.members))
        if bool(bad.any()):
            raise ValueError(f"teacher.mixture: route value {int(route[bad][0])} names no member; allowed: "
                             f"{allowed_routes(self.names)}")
        return route

    def __call__(self, batch: Batch, task: RunsModels, taps: Sequence[str] = (),
                 student: ModelOutput | None = None) -> ModelOutput:
        self.pending_terms = {}
        if self.route == "column":
            return self._column(batch, task, taps)
        with torch.no_grad():
            outs = [m(batch, task, taps) for m in self.members]
        for o in outs:
            if o.logits is None:
                raise ValueError("teacher.mixture: a learned route blends dense outputs; a member gives only top-k "
                                 "log-probabilities (use a full-logits member cache)")
        logits = torch.stack([o.logits.float() for o in outs], dim=1)  # (B, M, ...)
        log_gate = torch.log_softmax(self.router(self._router_features(batch, outs, student)).float(), dim=-1)
        gate = log_gate.exp()  # (B, M)
        if self.route == "learned":
            top = gate.argmax(-1)
            self.counts += torch.bincount(top.detach().cpu(), minlength=len(self.members))
            st = gate - gate.detach()  # zero in value, the router's gradient in backward

            def combine(z: torch.Tensor) -> torch.Tensor:
                w = st.reshape(*st.shape, *([1] * (z.ndim - 2)))
                picked = z[torch.arange(z.shape[0], device=z.device), top]
                return picked + (w * torch.nan_to_num(z, neginf=0.0, posinf=0.0)).sum(1)

            out = combine(logits)
        else:
            def combine(z: torch.Tensor) -> torch.Tensor:
                w = gate.reshape(*gate.shape, *([1] * (z.ndim - 2)))
                return (w * z).sum(1)

            if self.reduce == "logits":
                out = combine(logits)
            else:
                w = gate.reshape(*gate.shape, *([1] * (logits.ndim - 2)))
                out = torch.logsumexp(torch.log_softmax(logits, dim=-1) + torch.log(w.clamp_min(1e-30)), dim=1)
        feats: dict[str, torch.Tensor] = {}
        for name in taps:
            shapes = {tuple(o.features[name].shape) for o in outs}
            if len(shapes) != 1:
                raise ValueError(f"teacher.mixture: members give feature {name!r} different shapes {sorted(shapes)}")
            feats[name] = combine(torch.stack([o.features[name].float() for o in outs], dim=1))
        if self.balance > 0 and torch.is_grad_enabled():
            m = len(self.members)
            # KL(u || mean gate) with u uniform: sum_e u_e (log u_e - log mean_e); the log of the batch mean taken
            # in log space, so a saturated gate (mean_e ~ 0) still has a gradient
            log_mean = torch.logsumexp(log_gate, dim=0) - math.log(log_gate.shape[0])
            self.pending_terms["balance"] = self.balance * (math.log(1.0 / m) - log_mean).mean()
        return ModelOutput(out, feats)

    def _router_features(self, batch: Batch, outs: list[ModelOutput], student: ModelOutput | None) -> torch.Tensor:
        if self.router_input == "student":
            if student is None or student.logits is None:
                raise ValueError("teacher.mixture: the router reads the student's output (router.input: student), "
                                 "and this call has none (a teacher pass or cache build outside training)")
            return _per_example(student.logits.detach(), batch)
        return torch.cat([_per_example(o.logits, batch) for o in outs], dim=-1)

    @torch.no_grad()
    def _column(self, batch: Batch, task: RunsModels, taps: Sequence[str]) -> ModelOutput:
        route = self.routes_of(batch)
        self.counts += torch.bincount(route.cpu(), minlength=len(self.members))
        n = len(batch)
        logits: torch.Tensor | None = None
        top_idx: torch.Tensor | None = None
        top_lp: torch.Tensor | None = None
        num_classes = 0
        feats: dict[str, torch.Tensor] = {}
        for j, member in enumerate(self.members):
            rows = (route == j).nonzero().flatten()
            if rows.numel() == 0:
                continue
            rows_dev = rows.to(route.device)
            sub = member(batch.select(rows_dev), task, taps)
            if getattr(sub, "hidden", None) is not None:
                raise ValueError("teacher.mixture: a member gave hidden states (chunked losses), not logits")
            if sub.logits is not None:
                if logits is None:
                    logits = sub.logits.new_zeros((n, *sub.logits.shape[1:]), dtype=torch.float32)
                logits = _put(logits, rows_dev, sub.logits.float(), "logits")
            if sub.topk is not None:
                if top_idx is None:
                    top_idx = sub.topk.indices.new_zeros((n, *sub.topk.indices.shape[1:]))
                    top_lp = sub.topk.logprobs.new_zeros((n, *sub.topk.logprobs.shape[1:]), dtype=torch.float32)
                    num_classes = sub.topk.num_classes
                top_idx = _put(top_idx, rows_dev, sub.topk.indices, "top-k indices")
                top_lp = _put(top_lp, rows_dev, sub.topk.logprobs.float(), "top-k log-probabilities")
            for name in taps:
                f = sub.feature(name)
                if name not in feats:
                    feats[name] = f.new_zeros((n, *f.shape[1:]), dtype=torch.float32)
                feats[name] = _put(feats[name], rows_dev, f.float(), f"feature {name!r}")
        if logits is not None and top_idx is not None:
            kinds = sorted({type(self.members[j]).__name__ for j in route.unique().tolist()})
            raise ValueError(f"teacher.mixture: members ({', '.join(kinds)}) give dense logits for some examples and "
                             "only top-k log-probabilities for others; give every member the same kind")
        topk = TopKLogits(top_idx, top_lp, num_classes) if top_idx is not None else None
        return ModelOutput(logits, feats, topk)  # type: ignore[arg-type]


def _put(into: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, what: str) -> torch.Tensor:
    if tuple(values.shape[1:]) != tuple(into.shape[1:]):
        raise ValueError(f"teacher.mixture: members give {what} of different shapes {tuple(into.shape[1:])} and "
                         f"{tuple(values.shape[1:])} (one example each)")
    into[rows.to(into.device)] = values.to(into.device, into.dtype)
    return into
