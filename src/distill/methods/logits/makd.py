"""Multi-aspect knowledge distillation (MaKD): yes/no aspect questions answered offline by a language model
become extra soft targets for extra student outputs.

Lee et al., "Multi-aspect Knowledge Distillation with Large Language Model", CVPR 2025 (official code on
mdistiller: ``mdistiller/distillers/MaKD.py``). The student's head grows from C to C + Q outputs; the first C are
class logits trained with cross-entropy, the next Q are aspect logits trained with binary cross-entropy towards
the teacher's probability of answering "Yes" to each of Q questions about the example.

**What serves as the aspect teacher here.** The paper asks an image MLLM (InternVL2.5) Q questions per image.
We have no MLLM offline, so this is the text adaptation of ``../shared/methods/logit.md``: SmolLM2-135M-Instruct
answers hand-written questions about each SST-2 sentence (acting? plot? humour? ...), and P(yes) comes from the
first generated token's logits, exactly as the official script extracts it. On CIFAR there is no honest
per-image aspect teacher; aspects fixed by the class label would be an auxiliary-label ablation, not MaKD, and
this module does not offer them.

MaKD: cross-entropy on the class logits plus BCE of the aspect logits towards offline aspect answers.

With student output z in R^{C+Q}, z_cls = z[:C], z_asp = z[C:C+Q] and teacher answers a_ij = P(yes) =
sigmoid(l_yes - l_no) in [0, 1] for example i and question j:

    L = ce_weight * CE(z_cls, y) + alpha * mean_{i,j} BCEWithLogits(z_asp_ij, a_ij)

(the mean runs over batch x Q). There is no temperature and no teacher network at train time: the teacher
source is :class:`AspectTargets`, a cached [N, Q] array looked up by example index. Defaults follow the
official config (``alpha`` 4.0, ``ce_weight`` 1.0). Build the student with ``num_classes = C + Q``;
evaluation and export use only the first C outputs (:meth:`inference_model`).

Paper: Multi-aspect Knowledge Distillation with Large Language Model, CVPR 2025, arXiv:2501.13341; code:
taegyeong-lee/MaKD-Multi-aspect-knowledge-distillation-with-Large-Language-Model.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import Batch
from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, logits_of, require_labels, require_teacher
from distill.methods.logits.losses import cross_entropy

ASPECT_FEATURE = "aspect_probs"


class FirstLogits(nn.Module):
    """Wraps a model whose output has C + Q columns and keeps the first C (the class logits) for prediction.

    The released MaKD ``validate`` takes the top-1 over all C + Q outputs; predictions here use the class
    logits only."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        self.num_classes = num_classes

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))[..., : self.num_classes]


@register_method(
    "makd",
    family="logits",
    paper="Multi-aspect Knowledge Distillation with Large Language Model",
    year=2025,
    venue="CVPR",
    arxiv="2501.13341",
    repo="taegyeong-lee/MaKD-Multi-aspect-knowledge-distillation-with-Large-Language-Model",
    aliases=("multi_aspect",),
)
class MultiAspectKD(Method):
    """MaKD: cross-entropy on the class logits plus BCE of the aspect logits towards offline aspect answers."""

    tasks = frozenset({"text_classification"})

    needs_labels = True
    #: its teacher is the run's file of aspect answers (``data.aspects``), not a model
    reads_aspects: ClassVar[bool] = True

    @classmethod
    def check_experiment(cls, cfg: Any, index: int) -> None:
        """MaKD's teacher is the file of offline aspect answers ``data.aspects`` of a text-classification run."""
        if cfg.task != "text_classification" or cfg.data is None or cfg.data.aspects is None:
            raise ValueError(f"data.aspects: required by method {cfg.methods[index].name!r} (a file of aspect "
                             "answers scored on the training texts of a text_classification run; see docs/text.md)")

    def __init__(self, num_classes: int, alpha: float = 4.0, ce_weight: float = 1.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes (the number of real classes C) must be >= 2, got {num_classes}")
        if alpha < 0 or ce_weight < 0:
            raise ValueError("alpha and ce_weight must be non-negative")
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self.ce_weight = float(ce_weight)

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        width = student.logits.shape[-1]
        if teacher is None or ASPECT_FEATURE not in teacher.features:
            raise ValueError("makd needs aspect targets as its teacher (an AspectTargets source)")
        q = teacher.features[ASPECT_FEATURE].shape[-1]
        if width != self.num_classes + q:
            raise ValueError(f"makd: the student has {width} outputs but needs num_classes + Q = "
                             f"{self.num_classes} + {q}; build it with num_classes: {self.num_classes + q}")

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        z = inputs.student.logits.float()
        targets = require_teacher(inputs, "makd").feature(ASPECT_FEATURE).float()
        c = self.num_classes
        z_asp = z[:, c:]
        if z_asp.shape != targets.shape:
            raise ValueError(f"makd: {z_asp.shape[-1]} aspect outputs but {targets.shape[-1]} aspect targets")
        terms = {"aspect_bce": self.alpha * F.binary_cross_entropy_with_logits(z_asp, targets)}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * cross_entropy(z[:, :c], require_labels(inputs, "makd"))
        return terms

    def inference_model(self, student: nn.Module) -> nn.Module:
        return FirstLogits(student, self.num_classes)


class AspectTargets:
    """Teacher source of offline aspect answers: a [N, Q] array of P(yes), served by ``batch.indices``.

    Saved as safetensors with the questions and a fingerprint of the texts in the metadata, so a file scored on
    other texts or with other questions is refused rather than silently misaligned."""

    def __init__(self, probs: torch.Tensor, questions: Sequence[str] = (), fingerprint: str = ""):
        if probs.ndim != 2:
            raise ValueError(f"aspect targets must be [N, Q], got shape {tuple(probs.shape)}")
        if bool(((probs < 0) | (probs > 1)).any()) or not bool(torch.isfinite(probs).all()):
            raise ValueError("aspect targets must be probabilities in [0, 1]")
        if questions and len(questions) != probs.shape[1]:
            raise ValueError(f"{len(questions)} questions for {probs.shape[1]} aspect columns")
        self.probs = probs.float()
        self.questions = list(questions)
        self.fingerprint = fingerprint

    def to(self, *args: object, **kwargs: object) -> AspectTargets:
        device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
        if device is not None:
            self.probs = self.probs.to(device)  # type: ignore[arg-type]
        return self

    def __call__(self, batch: Batch, task: object = None, taps: Sequence[str] = ()) -> ModelOutput:
        if batch.indices is None:
            raise ValueError("aspect targets are looked up by example index, but the batch carries no indices")
        if taps:
            raise ValueError(f"aspect targets hold no features; asked for {list(taps)}")
        idx = batch.indices.to(self.probs.device)
        if int(idx.max()) >= self.probs.shape[0] or int(idx.min()) < 0:
            raise IndexError(f"example index {int(idx.max())} outside the {self.probs.shape[0]} aspect rows")
        return ModelOutput(None, {ASPECT_FEATURE: self.probs[idx]})  # type: ignore[arg-type]

    def save(self, path: str | Path) -> None:
        import json

        from safetensors.torch import save_file

        meta = {"questions": json.dumps(self.questions), "fingerprint": self.fingerprint}
        save_file({"probs": self.probs.contiguous().cpu()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None) -> AspectTargets:
        import json

        from safetensors import SafetensorError, safe_open

        from distill.core.safe_pickle import UnsafeFileError

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                probs = f.get_tensor("probs")
        except SafetensorError as e:  # e.g. a pickle named .safetensors: never handed to a pickle reader
            raise UnsafeFileError(path, f"not a safetensors file ({e})") from None
        fp = meta.get("fingerprint", "")
        if expect_fingerprint is not None and fp != expect_fingerprint:
            raise ValueError(f"{path}: aspect targets were scored on other texts (fingerprint {fp[:12] or 'none'}, "
                             f"expected {expect_fingerprint[:12]})")
        return cls(probs, json.loads(meta.get("questions", "[]")), fp)


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (what an aspect file was scored on)."""
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def yes_probability(first_token_logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> torch.Tensor:
    """P(yes) = sigmoid(l_yes - l_no) from the logits of the first answer token, (..., V) -> (...).

    The official script uses the single ids of "Yes" and "No"; tokenizers split them with or without a leading
    space, so each side may list several ids and its logit is their logsumexp (the probability of either
    spelling). With one id per side this is exactly softmax([l_yes, l_no])[0]."""
    logits = first_token_logits.float()
    l_yes = torch.logsumexp(logits[..., list(yes_ids)], dim=-1)
    l_no = torch.logsumexp(logits[..., list(no_ids)], dim=-1)
    return torch.sigmoid(l_yes - l_no)


def answer_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Ids of ``word`` and `` word`` that are single tokens in ``tokenizer`` (at least one must be)."""
    ids = []
    for form in (word, " " + word):
        tok = tokenizer.encode(form, add_special_tokens=False)
        if len(tok) == 1 and tok[0] not in ids:
            ids.append(tok[0])
    if not ids:
        raise ValueError(f"neither {word!r} nor {' ' + word!r} is a single token of this tokenizer")
    return ids


@torch.no_grad()
def aspect_prompt(tokenizer: Any, text: str, question: str) -> str:
    """The chat-template prompt asking ``question`` about ``text`` (one user message, then the generation
    prompt), as the MaKD pipeline asks its MLLM."""
    msg = [{"role": "user", "content": f"Sentence: \"{text}\"\n{question} Answer Yes or No."}]
    return tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)


def _shared_prefix(prompts: Sequence[str]) -> str:
    """The longest common start of ``prompts``, cut after its last newline (a token boundary for the usual BPE
    and WordPiece tokenizers; :func:`score_aspects` checks it and falls back otherwise)."""
    prefix = prompts[0]
    for p in prompts[1:]:
        n = 0
        while n < min(len(prefix), len(p)) and prefix[n] == p[n]:
            n += 1
        prefix = prefix[:n]
    cut = prefix.rfind("\n")
    return prefix[:cut + 1] if cut >= 0 else ""


@torch.no_grad()
def _score_with_shared_prefix(model: nn.Module, tokenizer: Any, prompts: Sequence[str], rows: Sequence[list[int]],
                              yes: Sequence[int], no: Sequence[int], device: torch.device) -> torch.Tensor | None:
    """P(yes) for prompts (tokenised as ``rows``) that share a start: the start runs once, its key/value cache
    serves every question. Returns None when the prompts' tokens do not split at the shared start."""
    prefix = _shared_prefix(prompts)
    if not prefix:
        return None
    head = tokenizer.encode(prefix, add_special_tokens=False)
    if not head or any(r[:len(head)] != head or len(r) == len(head) for r in rows):
        return None
    tails = [r[len(head):] for r in rows]
    out = model(input_ids=torch.tensor([head], device=device), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    # transformers >= 5.x names the argument ``cache``; earlier releases ``past_key_values``
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache.batch_repeat_interleave(len(tails))
    width = max(map(len, tails))
    ids = torch.zeros(len(tails), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(tails), len(head) + width, dtype=torch.long, device=device)
    mask[:, :len(head)] = 1
    for i, t in enumerate(tails):  # right padding: a real token never attends to the padding after it
        ids[i, :len(t)] = torch.tensor(t)
        mask[i, len(head):len(head) + len(t)] = 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_arg: cache}).logits
    last = torch.tensor([len(t) - 1 for t in tails], device=device)
    return yes_probability(logits[torch.arange(len(tails), device=device), last], yes, no).cpu()


def score_aspects(model: nn.Module, tokenizer: Any, texts: Sequence[str], questions: Sequence[str],
                  batch_size: int = 16, max_length: int = 256, progress: Any = None,
                  reuse_prefix: bool = False) -> torch.Tensor:
    """Ask a causal LM each question about each text; return the [N, Q] P(yes) matrix.

    The prompt is the tokenizer's chat template with one user message, the text, the question and "Answer Yes or
    No.", and the generation prompt (:func:`aspect_prompt`); P(yes) is read from the logits of the next (first
    answer) token. ``reuse_prefix``: run each text's shared prompt start (system turn, the sentence) once and
    reuse its key/value cache for the Q questions (same numbers, a fraction of the compute when the sentence is
    long next to the question); texts whose prompts do not split cleanly, or exceed ``max_length``, fall back
    to full prompts."""
    yes, no = answer_token_ids(tokenizer, "Yes"), answer_token_ids(tokenizer, "No")
    prompts = [aspect_prompt(tokenizer, text, q) for text in texts for q in questions]
    model.eval()
    device = next(model.parameters()).device
    result: list[torch.Tensor | None] = [None] * len(texts)
    if reuse_prefix:
        q = len(questions)
        for i in range(len(texts)):
            group = prompts[i * q:(i + 1) * q]
            rows = [tokenizer.encode(p, add_special_tokens=False) for p in group]
            if max(map(len, rows)) <= max_length:
                result[i] = _score_with_shared_prefix(model, tokenizer, group, rows, yes, no, device)
            if progress is not None:
                progress((i + 1) * q, len(prompts))
    todo = [i for i, r in enumerate(result) if r is None]
    rest = [p for i in todo for p in prompts[i * len(questions):(i + 1) * len(questions)]]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the next-token logits then sit at the last position of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(rest), batch_size):
                enc = tokenizer(rest[start:start + batch_size], return_tensors="pt", padding=True,
                                truncation=True, max_length=max_length, add_special_tokens=False).to(device)
                logits = model(**enc).logits[:, -1]
                out.append(yes_probability(logits, yes, no).cpu())
                if progress is not None and not reuse_prefix:
                    progress(min(start + batch_size, len(rest)), len(rest))
    finally:
        tokenizer.padding_side = side
    if out:
        flat = torch.cat(out).view(len(todo), len(questions))
        for k, i in enumerate(todo):
            result[i] = flat[k]
    return torch.stack([r for r in result if r is not None]) if texts else torch.zeros(0, len(questions))


def aspect_report(probs: torch.Tensor, labels: torch.Tensor, questions: Sequence[str] = (),
                  min_variance: float = 0.01) -> dict[str, Any]:
    """The spec's gate before training: per question the variance of P(yes) (> ``min_variance`` to count as
    informative), its mean, and its Pearson correlation with the (binary or integer) label."""
    p = probs.double()
    y = labels.double()
    rows = []
    for j in range(p.shape[1]):
        col = p[:, j]
        var = float(col.var(unbiased=False))
        denom = float(col.std(unbiased=False) * y.std(unbiased=False))
        corr = float(((col - col.mean()) * (y - y.mean())).mean() / denom) if denom > 0 else 0.0
        rows.append({"question": questions[j] if j < len(questions) else f"q{j}", "mean": float(col.mean()),
                     "variance": var, "label_correlation": corr, "informative": var > min_variance})
    near_half = bool(((p - 0.5).abs() < 0.05).all())
    informative = any(r["informative"] for r in rows) and not near_half
    return {"questions": rows, "informative": informative}
