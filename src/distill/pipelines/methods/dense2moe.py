"""Dense2MoE: a dense (SwiGLU) FFN restructured into a shared expert plus top-k routed experts, initialised from
Taylor importance scores and trained by distillation from the dense model with a load-balancing term.

Paper: "Dense2MoE: Restructuring Diffusion Transformer to MoE for Efficient Text-to-Image Generation" (ICCV 2025,
arXiv 2510.09094). No official code exists; this follows the spec (../shared/methods/pipelines.md, row 11), itself
reconstructed from the abstract and a third-party paper note. Parts marked (R) are reconstructed choices.

* **Split.** An FFN of hidden width I = r*d becomes a shared expert MLP_s of width I_s and n routed experts of width
  I_n each, I = I_s + n*I_n: every parameter is kept (the router W_g, n x d, is new). Forward:
  ``y = MLP_s(x) + sum_{i in TopK(g(x), k)} g_i(x) MLP_n^(i)(x)``, g = softmax(W_g x) over the n experts; the kept
  top-k weights are not renormalised by default (R: ``renormalise`` and ``softmax_after_topk`` flags). A SwiGLU FFN
  is separable over hidden neurons (y = sum_j down[:, j] * act(gate_j . x) * (up_j . x)), so with k = n and all gate
  weights 1 the converted FFN equals the dense one. Here every routed expert is computed and weighted by g (zero
  outside the top k): the same values as a sparse dispatch, simpler on a CPU, without the FLOP saving.
* **Taylor importance.** I_w = |w * dL/dw|, accumulated (summed) over calibration batches of the LM loss. The score
  of hidden neuron j is the sum of I_w over gate row j, up row j and down column j (R: the per-neuron grouping).
* **Partition.** Neurons sorted by score: the top I_s form the shared expert; the rest are spread equally over the n
  experts, by a seeded random balanced split (default, R) or contiguously by rank (``split: contiguous``). The
  non-Taylor baseline (``scores=None``) draws the shared neurons at random too.
* **Losses.** Output / block-feature distillation with normalised weights: L_feat = ||f_T - f_S||^2 / E||f_T||^2
  (R: w_l = 1/E||f_T^(l)||^2); load balance (Switch form, R): L_bal = n * sum_i F_i P_i, F_i the fraction of the
  top-k slots routed to expert i and P_i its mean gate probability (1 for perfectly uniform routing); lambda = 1e-2.
* **Stages.** (1) enhanced init: Taylor split, then distil the shared-expert-only model (k = 0) with L_feat;
  (2) MoE distillation: shared expert frozen, routed experts and router trained with L_feat + lambda L_bal.
  The baseline ``joint`` trains everything at once from the split; ``pruned`` keeps the top-I_a neurons of the
  Taylor order as a dense FFN (Diff-Pruning's place) and distils it the same way.
* **CPU adaptation (the spec's):** the DiT becomes an LLM (SmolLM2-135M); distillation is layer-wise on cached FFN
  inputs and teacher FFN outputs of the converted layers; the Mixture-of-Blocks stage (3) is not implemented.

Stage kinds: ``dense2moe_scores`` (Taylor scores of the chosen layers on calibration text) and ``dense2moe_convert``
(split, stage 1, stage 2, held-out perplexity / next-token agreement / expert-usage entropy; the converted FFNs as
tables). ``configs/pipelines/dense2moe_smollm2.yaml`` runs both on SmolLM2 and tinyshakespeare.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from distill.config import Strict
from distill.pipelines.stage import Artefact, StageContext, StageKind, StageOutput, register_stage_kind

__all__ = ["MoEFFN", "balance_loss", "chunk_text", "distil_layer", "expert_entropy", "feature_loss", "moefy",
           "evaluate_converted", "moefy_mlp", "neuron_scores", "perplexity_and_agreement", "split_neurons", "swapped",
           "taylor_scores", "usage_entropy"]


# --------------------------------------------------------------------------------------------------------- module


class MoEFFN(nn.Module):
    """A SwiGLU FFN as a shared expert (width ``shared``) plus ``n`` routed experts (width ``width`` each), top-k.

    ``active_k``: the number of routed experts used (0: the shared expert only, stage 1). After each forward,
    ``last_probs`` (tokens, n) and ``last_topk`` (tokens, k) hold the router's statistics for :func:`balance_loss`.
    """

    def __init__(self, dim: int, shared: int, n: int, width: int, k: int, act: Callable[[torch.Tensor], torch.Tensor]
                 = F.silu, renormalise: bool = False, softmax_after_topk: bool = False):
        super().__init__()
        if not 0 <= k <= n:
            raise ValueError(f"dense2moe: k must be in [0, n={n}], got {k}")
        self.dim, self.shared, self.n, self.width, self.k = dim, shared, n, width, k
        self.active_k = k
        self.act, self.renormalise, self.softmax_after_topk = act, renormalise, softmax_after_topk
        self.gate_s = nn.Linear(dim, shared, bias=False)
        self.up_s = nn.Linear(dim, shared, bias=False)
        self.down_s = nn.Linear(shared, dim, bias=False)
        self.gate_r = nn.Linear(dim, n * width, bias=False)
        self.up_r = nn.Linear(dim, n * width, bias=False)
        self.down_r = nn.Linear(n * width, dim, bias=False)
        self.router = nn.Linear(dim, n, bias=False)
        self.last_probs: torch.Tensor | None = None
        self.last_topk: torch.Tensor | None = None
        #: per-expert counts of top-k slots, accumulated while not None (set to zeros(n) to start counting)
        self.usage: torch.Tensor | None = None

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.gate_s.parameters(), *self.up_s.parameters(), *self.down_s.parameters()]

    def routed_parameters(self) -> list[nn.Parameter]:
        return [*self.gate_r.parameters(), *self.up_r.parameters(), *self.down_r.parameters(),
                *self.router.parameters()]

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) routing weights: g_i for the top-k experts, 0 elsewhere (records the router statistics)."""
        logits = self.router(x)
        probs = logits.float().softmax(-1)
        top = probs.topk(self.active_k, dim=-1)
        if self.softmax_after_topk:
            vals = logits.float().gather(-1, top.indices).softmax(-1)
        else:
            vals = top.values
            if self.renormalise:
                vals = vals / vals.sum(-1, keepdim=True)
        self.last_probs = probs.reshape(-1, self.n)
        self.last_topk = top.indices.reshape(-1, self.active_k)
        if self.usage is not None:
            self.usage += torch.bincount(self.last_topk.reshape(-1).cpu(), minlength=self.n)
        return torch.zeros_like(probs).scatter(-1, top.indices, vals).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down_s(self.act(self.gate_s(x)) * self.up_s(x))
        if self.active_k == 0 or self.n == 0:
            self.last_probs = self.last_topk = None
            return y
        g = self.gates(x)
        h = (self.act(self.gate_r(x)) * self.up_r(x)).unflatten(-1, (self.n, self.width)) * g[..., None]
        return y + self.down_r(h.flatten(-2))

    def active_parameters(self) -> int:
        """FFN parameters used per token (router excluded): 3 * d * (I_s + k * I_n)."""
        return 3 * self.dim * (self.shared + self.active_k * self.width)


def _swiglu_weights(mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()


def moefy_mlp(mlp: nn.Module, shared_idx: torch.Tensor, expert_idx: list[torch.Tensor], k: int,
              router_seed: int = 0, router_std: float = 0.02, **flags: bool) -> MoEFFN:
    """A :class:`MoEFFN` from a Llama-style MLP (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``): neurons
    ``shared_idx`` form the shared expert and ``expert_idx[i]`` routed expert i (equal sizes); the router is drawn
    from N(0, router_std^2) with ``router_seed`` (R)."""
    gate, up, down = _swiglu_weights(mlp)
    widths = {len(e) for e in expert_idx}
    if len(widths) > 1:
        raise ValueError(f"dense2moe: the routed experts must have equal widths, got {sorted(widths)}")
    width = widths.pop() if widths else 0
    ffn = MoEFFN(gate.shape[1], len(shared_idx), len(expert_idx), width, k, act=getattr(mlp, "act_fn", F.silu),
                 **flags)
    routed = torch.cat(expert_idx) if expert_idx else torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        ffn.gate_s.weight.copy_(gate[shared_idx])
        ffn.up_s.weight.copy_(up[shared_idx])
        ffn.down_s.weight.copy_(down[:, shared_idx])
        ffn.gate_r.weight.copy_(gate[routed])
        ffn.up_r.weight.copy_(up[routed])
        ffn.down_r.weight.copy_(down[:, routed])
        g = torch.Generator().manual_seed(router_seed)
        ffn.router.weight.copy_(torch.randn(ffn.router.weight.shape, generator=g) * router_std)
    return ffn.to(gate.device)


def split_neurons(scores: torch.Tensor | None, size: int, shared: int, n: int,
                  mode: Literal["random", "contiguous"] = "random",
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(shared neuron ids, [ids of routed expert i]) of a width-``size`` FFN. With ``scores``: the ``shared`` best
    neurons are shared and the rest are dealt to n experts (a seeded random balanced split, or contiguous by rank);
    ``scores=None``: a random split of all neurons (the non-Taylor baseline)."""
    if (size - shared) % max(n, 1) or shared > size:
        raise ValueError(f"dense2moe: {size} neurons do not split into {shared} shared + {n} equal experts")
    if scores is None:
        order = torch.randperm(size, generator=generator)
    else:
        order = torch.argsort(scores, descending=True, stable=True)
    rest = order[shared:]
    if mode == "random" and scores is not None:
        rest = rest[torch.randperm(len(rest), generator=generator)]
    experts = list(rest.chunk(n)) if n else []
    return order[:shared].sort().values, [e.sort().values for e in experts]


def moefy(model: nn.Module, layers: Iterable[int], shared: int, n: int, k: int,
          scores: dict[int, torch.Tensor] | None, mode: Literal["random", "contiguous"] = "random",
          seed: int = 0, **flags: bool) -> dict[int, MoEFFN]:
    """Convert the FFNs of ``layers`` of a Llama-style causal LM (``model.model.layers[i].mlp``): one
    :class:`MoEFFN` per layer (install them with :func:`swapped`; every other weight stays the model's)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in layers:
        mlp = model.model.layers[i].mlp
        size = mlp.gate_proj.weight.shape[0]
        s_idx, e_idx = split_neurons(None if scores is None else scores[i], size, shared, n, mode, g)
        out[i] = moefy_mlp(mlp, s_idx, e_idx, k, router_seed=seed * 1000 + i, **flags)
    return out


@contextlib.contextmanager
def swapped(model: nn.Module, ffns: dict[int, nn.Module]) -> Iterator[nn.Module]:
    """Install ``ffns`` (layer -> module) in the model for the ``with`` block, then put the dense FFNs back."""
    layers = model.model.layers
    old = {i: layers[i].mlp for i in ffns}
    try:
        for i, f in ffns.items():
            layers[i].mlp = f
        yield model
    finally:
        for i, f in old.items():
            layers[i].mlp = f


# ------------------------------------------------------------------------------------------------- importance


def taylor_scores(model: nn.Module, batches: Iterable[torch.Tensor], layers: Iterable[int]) -> dict[int, torch.Tensor]:
    """Per hidden neuron of each layer's FFN: sum over batches of |w * dL/dw| over gate row j, up row j and down
    column j, L the model's next-token loss on the batch. Only the FFN weights get gradients (the model's own
    ``requires_grad`` flags are restored)."""
    layers = list(layers)
    mlps = {i: model.model.layers[i].mlp for i in layers}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    ws = {i: (m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight) for i, m in mlps.items()}
    for trio in ws.values():
        for w in trio:
            w.requires_grad_(True)
    acc = {i: torch.zeros(ws[i][0].shape[0]) for i in layers}
    try:
        for ids in batches:
            out = model(input_ids=ids, labels=ids)
            grads = torch.autograd.grad(out.loss, [w for i in layers for w in ws[i]])
            for j, i in enumerate(layers):
                gate, up, down = ws[i]
                gg, gu, gd = grads[3 * j:3 * j + 3]
                acc[i] += neuron_scores((gate.detach() * gg).abs(), (up.detach() * gu).abs(),
                                        (down.detach() * gd).abs())
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
    return acc


def neuron_scores(gate_iw: torch.Tensor, up_iw: torch.Tensor, down_iw: torch.Tensor) -> torch.Tensor:
    """Per-neuron score from elementwise importances: row sums of gate and up (I x d) plus column sums of down
    (d x I)."""
    return (gate_iw.sum(1) + up_iw.sum(1) + down_iw.sum(0)).float().cpu()


# ------------------------------------------------------------------------------------------------------ losses


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||f_T - f_S||^2 / E||f_T||^2 (both averaged over tokens): the normalised block-feature MSE."""
    t = teacher.detach().float()
    return (student.float() - t).pow(2).sum(-1).mean() / t.pow(2).sum(-1).mean().clamp_min(1e-12)


def balance_loss(probs: torch.Tensor, topk: torch.Tensor, n: int) -> torch.Tensor:
    """Switch-style load balance n * sum_i F_i P_i: ``probs`` (tokens, n) router probabilities, ``topk``
    (tokens, k) chosen experts; F_i = share of the tokens * k slots that went to i, P_i = mean probability of i."""
    counts = torch.zeros(n, device=probs.device).scatter_add_(0, topk.reshape(-1), torch.ones(topk.numel(),
                                                                                              device=probs.device))
    frac = counts / max(topk.numel(), 1)
    return n * (frac * probs.float().mean(0)).sum()


def expert_entropy(topk: torch.Tensor, n: int) -> float:
    """Entropy (nats) of the expert-usage distribution F (ln n when every expert gets the same share)."""
    return usage_entropy(torch.bincount(topk.reshape(-1), minlength=n))


def usage_entropy(counts: torch.Tensor) -> float:
    """Entropy (nats) of the distribution ``counts / sum(counts)``."""
    f = counts.float()
    f = f / f.sum().clamp_min(1)
    return float(-(f[f > 0] * f[f > 0].log()).sum())


# ---------------------------------------------------------------------------------------------- layer training


def distil_layer(ffn: MoEFFN, x: torch.Tensor, y: torch.Tensor, stage: Literal["shared", "routed", "joint"],
                 steps: int, batch: int, lr: float, balance: float = 1e-2,
                 generator: torch.Generator | None = None) -> list[float]:
    """Train ``ffn`` on cached FFN inputs ``x`` (N, d) towards the dense FFN's outputs ``y`` (N, d).
    ``shared``: the shared expert alone (k = 0) with L_feat; ``routed``: the shared expert frozen, routed experts
    and router with L_feat + balance * L_bal; ``joint``: everything with the same loss. Adam, cosine decay; returns
    the loss per step."""
    if stage == "shared":
        ffn.active_k, params = 0, ffn.shared_parameters()
    else:
        ffn.active_k = ffn.k
        params = ffn.routed_parameters() + (ffn.shared_parameters() if stage == "joint" else [])
    for p in ffn.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=generator)
        loss = feature_loss(ffn(x[idx]), y[idx])
        if ffn.active_k > 0 and balance:
            loss = loss + balance * balance_loss(ffn.last_probs, ffn.last_topk, ffn.n)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    for p in ffn.parameters():
        p.requires_grad_(True)
    ffn.active_k = ffn.k if stage != "shared" else 0
    return losses


@torch.no_grad()
def ffn_io(model: nn.Module, batches: Iterable[torch.Tensor], layers: Iterable[int]) -> dict[int, tuple[torch.Tensor,
                                                                                                          torch.Tensor]]:
    """Each layer's FFN input and (dense) output over the batches, flattened to (tokens, d)."""
    layers = list(layers)
    store: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {i: ([], []) for i in layers}
    hooks = []
    for i in layers:
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor, i: int = i) -> None:
            store[i][0].append(args[0].reshape(-1, args[0].shape[-1]).float().cpu())
            store[i][1].append(out.reshape(-1, out.shape[-1]).float().cpu())
        hooks.append(model.model.layers[i].mlp.register_forward_hook(hook))
    try:
        for ids in batches:
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {i: (torch.cat(a), torch.cat(b)) for i, (a, b) in store.items()}


@torch.no_grad()
def perplexity_and_agreement(model: nn.Module, batches: Iterable[torch.Tensor],
                             reference: list[torch.Tensor] | None = None) -> tuple[float, float | None,
                                                                                   list[torch.Tensor]]:
    """Held-out perplexity (next-token), top-1 agreement with ``reference`` (the teacher's argmax per batch, or
    None) and this model's argmax per batch."""
    nll, count, agree, tops = 0.0, 0, 0, []
    for j, ids in enumerate(batches):
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll += float(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        count += ids[:, 1:].numel()
        top = logits.argmax(-1)
        tops.append(top)
        if reference is not None:
            agree += int((top == reference[j]).sum())
    return math.exp(nll / count), (agree / count if reference is not None else None), tops


def chunk_text(ids: torch.Tensor, length: int, eval_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids -> (train chunks, eval chunks) of ``length`` tokens: the first 1 - eval_fraction trains."""
    chunks = ids[: len(ids) // length * length].view(-1, length)
    cut = int(round(len(chunks) * (1 - eval_fraction)))
    return chunks[:cut], chunks[cut:]


def convert(model: nn.Module, layers: list[int], scores: dict[int, torch.Tensor] | None, io: dict[int, tuple],
            arm: Literal["two_stage", "joint", "pruned"], shared: int, n: int, k: int, steps: int, batch: int,
            lr: float, balance: float, seed: int, mode: Literal["random", "contiguous"] = "random",
            log: Callable[[str], None] = print, **flags: bool) -> tuple[dict[int, MoEFFN], dict[int, MoEFFN] | None]:
    """One arm on cached FFN i/o: (the trained FFNs, the stage-1 shared-only FFNs or None). ``pruned``: a dense
    FFN of the top ``shared + k * width`` Taylor neurons (scores required), distilled with L_feat."""
    g = torch.Generator().manual_seed(seed)
    if arm == "pruned":
        size = model.model.layers[layers[0]].mlp.gate_proj.weight.shape[0]
        keep = shared + k * (size - shared) // n
        ffns = moefy(model, layers, keep, 0, 0, scores, mode, seed)
        for i, f in ffns.items():
            distil_layer(f, *io[i], "shared", 2 * steps, batch, lr, 0.0, g)
        return ffns, None
    ffns = moefy(model, layers, shared, n, k, scores, mode, seed, **flags)
    stage1 = None
    if arm == "two_stage":
        for i, f in ffns.items():
            distil_layer(f, *io[i], "shared", steps, batch, lr, 0.0, g)
        stage1 = {i: _shared_only(f) for i, f in ffns.items()}
        for i, f in ffns.items():
            distil_layer(f, *io[i], "routed", steps, batch, lr, balance, g)
    else:
        for i, f in ffns.items():
            distil_layer(f, *io[i], "joint", 2 * steps, batch, lr, balance, g)
    log(f"  {arm}: converted layers {layers}")
    return ffns, stage1


def _shared_only(ffn: MoEFFN) -> MoEFFN:
    import copy

    f = copy.deepcopy(ffn)
    f.active_k = 0
    f.k = 0
    return f


# ----------------------------------------------------------------------------------------------------- stages


class Dense2MoEModel(Strict):
    """The dense causal LM: ``gguf`` (a GGUF file, dequantised to fp32, with its tokenizer) or ``random_llama``
    (a small randomly initialised Llama over bytes, vocabulary 256: tests)."""

    gguf: str | None = None
    random_llama: dict[str, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> Dense2MoEModel:
        if (self.gguf is None) == (self.random_llama is None):
            raise ValueError("model: give exactly one of gguf, random_llama")
        return self


class Dense2MoEScoresOptions(Strict):
    model: Dense2MoEModel
    text: str
    layers: list[int] = Field(min_length=1)
    chunk: int = Field(128, gt=1)
    calibration_chunks: int = Field(64, gt=0)
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    max_tokens: int = Field(200_000, gt=0)


def load_model(ctx: StageContext, spec: Dense2MoEModel) -> tuple[nn.Module, Callable[[str], list[int]]]:
    if spec.gguf is not None:
        from distill.llm.models import load_gguf_model, load_gguf_tokenizer

        path = ctx.resolve(spec.gguf)
        tok = load_gguf_tokenizer(path)
        return load_gguf_model(path), lambda t: tok(t, add_special_tokens=False)["input_ids"]
    from distill.llm.models import small_llama

    opts = dict(spec.random_llama or {})
    model = small_llama(256, **opts).eval()
    return model, lambda t: list(t.encode("utf-8"))


def _text_chunks(ctx: StageContext, model_spec: Dense2MoEModel, text: str, chunk: int, eval_fraction: float,
                 max_tokens: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, encode = load_model(ctx, model_spec)
    raw = Path(ctx.resolve(text)).read_text(encoding="utf-8")
    ids = torch.tensor(encode(raw[: max_tokens * 8])[:max_tokens])
    train, held = chunk_text(ids, chunk, eval_fraction)
    return model, train, held


@register_stage_kind
class Dense2MoEScores(StageKind):
    """Taylor importance of every FFN neuron of ``layers`` on the first ``calibration_chunks`` training chunks
    (LM loss). Table ``scores``: ``layer`` (L,), ``score`` (L, I)."""

    name = "dense2moe_scores"
    summary = "Dense2MoE step 1: Taylor importance |w * dL/dw| per FFN neuron on calibration text"
    Options = Dense2MoEScoresOptions

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        model, train, _ = _text_chunks(ctx, options.model, options.text, options.chunk, options.eval_fraction,
                                       options.max_tokens)
        cal = train[: options.calibration_chunks]
        scores = taylor_scores(model, cal.split(4), options.layers)
        ctx.log(f"[{ctx.name}] Taylor scores of layers {options.layers} from {len(cal)} chunks")
        return StageOutput({"scores": {"layer": torch.tensor(options.layers),
                                       "score": torch.stack([scores[i] for i in options.layers])}},
                           {"calibration_chunks": len(cal), "options": options.model_dump(mode="json")})


class Dense2MoEConvertOptions(Strict):
    """The split and the layer-wise training; the model, text, chunking and layers are the scores stage's."""

    shared: int = Field(gt=0)
    experts: int = Field(gt=0)
    top_k: int = Field(gt=0)
    split: Literal["random", "contiguous"] = "random"
    arm: Literal["two_stage", "joint", "pruned"] = "two_stage"
    taylor: bool = True
    cache_chunks: int = Field(64, gt=0)
    eval_chunks: int = Field(16, gt=0)
    steps: int = Field(200, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    balance: float = Field(1e-2, ge=0)
    renormalise: bool = False
    softmax_after_topk: bool = False


@register_stage_kind
class Dense2MoEConvert(StageKind):
    """Split + distil (stage 1 shared-only, stage 2 routed with load balance) on cached FFN inputs/outputs, then
    the held-out perplexity and top-1 agreement of teacher, stage-1 and final students and the expert-usage
    entropy. Input ``scores``: a ``dense2moe_scores`` stage. Tables: ``ffn`` (one row per converted layer: the
    weights of the converted FFN)."""

    name = "dense2moe_convert"
    summary = "Dense2MoE steps 2-3: Taylor split into shared + routed experts, two-stage layer-wise distillation"
    Options = Dense2MoEConvertOptions
    inputs = {"scores": "a dense2moe_scores stage (same model, text and layers)"}

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        torch.manual_seed(ctx.seed)
        src = Dense2MoEScoresOptions.model_validate(inputs["scores"].meta["options"])
        table = inputs["scores"].table("scores")
        layers = src.layers
        scores = dict(zip(layers, table["score"], strict=True)) if options.taylor else None
        model, train, held = _text_chunks(ctx, src.model, src.text, src.chunk, src.eval_fraction, src.max_tokens)
        io = ffn_io(model, train[: options.cache_chunks].split(4), layers)
        ffns, stage1 = convert(model, layers, scores, io, options.arm, options.shared, options.experts,
                               options.top_k, options.steps, options.batch_size, options.lr, options.balance,
                               ctx.seed, options.split, ctx.log, renormalise=options.renormalise,
                               softmax_after_topk=options.softmax_after_topk)
        ev = list(held[: options.eval_chunks].split(4))
        ppl_t, _, ref = perplexity_and_agreement(model, ev)
        meta: dict[str, Any] = {"teacher_perplexity": round(ppl_t, 4)}
        ppl, agree, ents = evaluate_converted(model, ffns, ev, ref)
        meta.update(perplexity=round(ppl, 4), agreement=round(agree, 4),
                    expert_entropy=[round(e, 4) for e in ents], ln_experts=round(math.log(options.experts), 4),
                    active_fraction=round(next(iter(ffns.values())).active_parameters()
                                          / (3 * model.config.hidden_size * model.config.intermediate_size), 4))
        if stage1 is not None:
            p1, a1, _ = evaluate_converted(model, stage1, ev, ref)
            meta.update(stage1_perplexity=round(p1, 4), stage1_agreement=round(a1, 4))
        ctx.log(f"[{ctx.name}] {meta}")
        first = ffns[layers[0]]
        cols = {"layer": torch.tensor(layers)}
        for name in ("gate_s", "up_s", "down_s", "gate_r", "up_r", "down_r", "router"):
            if getattr(first, name).weight.numel():
                cols[name] = torch.stack([getattr(ffns[i], name).weight.detach() for i in layers])
        return StageOutput({"ffn": cols}, meta)


def evaluate_converted(model: nn.Module, ffns: dict[int, MoEFFN], batches: list[torch.Tensor],
                       reference: list[torch.Tensor]) -> tuple[float, float, list[float]]:
    """(perplexity, top-1 agreement with ``reference``, expert-usage entropy per layer) with ``ffns`` installed."""
    for f in ffns.values():
        f.usage = torch.zeros(f.n, dtype=torch.long) if f.n and f.active_k else None
    try:
        with swapped(model, ffns):
            ppl, agree, _ = perplexity_and_agreement(model, batches, reference)
        ents = [usage_entropy(f.usage) for f in ffns.values() if f.usage is not None]
    finally:
        for f in ffns.values():
            f.usage = None
    return ppl, float(agree or 0.0), ents
