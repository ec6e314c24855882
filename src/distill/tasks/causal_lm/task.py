"""Causal language modelling: token-level distillation of Hugging Face decoder-only models.

Data is a :class:`LMData` of right-padded token blocks: ``input_ids`` (N, L), ``attention_mask`` (N, L) and
``labels`` (N, L), a copy of the ids with -100 where no loss applies (prompt tokens of prompt/response data,
padding). Two loaders build it the way users bring text:

* :func:`text_blocks`: a plain-text corpus (e.g. tinyshakespeare ``input.txt``) tokenised once, chunked into
  fixed-length blocks, split into train/validation by a fixed contiguous cut (the last fraction is validation,
  so no block straddles the split);
* :func:`prompt_response_jsonl`: one JSON object a line with a prompt and a response (keys ``prompt`` and
  ``response``, or ``completion``); prompt tokens are masked, an EOS is appended to the response and kept.

The task returns logits (B, L, V) sliced to the tokenizer's real vocabulary (:func:`align_vocab`); methods shift
them (position t predicts token t + 1). Evaluation: perplexity = exp(mean next-token NLL over valid tokens) and,
when a teacher is given (or the batch carries its top-1 ids in ``meta["teacher_top1"]``), top-1 agreement with
the teacher on the same valid tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.batch import IGNORE_INDEX, Batch
from distill.core.hidden import HiddenStates

IGNORE = IGNORE_INDEX


@dataclass
class LMData:
    """Right-padded token sequences. ``prompt_lengths`` (N,) counts the prompt tokens of each row (0 for plain
    text), so generation can start from the prompt."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in (self.input_ids, self.attention_mask, self.labels)}
        if len(shapes) != 1 or self.input_ids.dim() != 2:
            raise ValueError(f"input_ids, attention_mask and labels must share one (N, L) shape, got {shapes}")
        if self.prompt_lengths is None:
            self.prompt_lengths = torch.zeros(len(self), dtype=torch.long)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, idx: torch.Tensor | slice) -> LMData:
        n = len(self)  # per-row meta tensors (a mixture's route column) are cut with the rows
        meta = {k: v[idx] if k == "route" and isinstance(v, torch.Tensor) and v.shape[:1] == (n,) else v
                for k, v in self.meta.items()}
        return LMData(self.input_ids[idx], self.attention_mask[idx], self.labels[idx], self.prompt_lengths[idx], meta)

    def fingerprint(self) -> str:
        """sha256 of the ids, mask and labels (what a teacher store built on this data must match)."""
        h = hashlib.sha256()
        for t in (self.input_ids, self.attention_mask, self.labels):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()


# -- loaders --------------------------------------------------------------------------------------------------
def text_blocks(source: str | Path, tokenizer: Any, block_size: int = 128, val_fraction: float = 0.1,
                max_tokens: int | None = None) -> tuple[LMData, LMData]:
    """Tokenise a plain UTF-8 text file, cut it into blocks of ``block_size`` tokens (the remainder dropped) and
    split it: the first blocks train, the last ``val_fraction`` validate (a fixed, contiguous split).
    ``max_tokens`` keeps only the first tokens of the corpus (to bound compute)."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text corpus {path} not found")
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    text = path.read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_blocks = len(ids) // block_size
    n_val = max(1, int(round(n_blocks * val_fraction)))
    if n_blocks - n_val < 1:
        raise ValueError(f"{path} gives {n_blocks} blocks of {block_size} tokens: too few for a train/val split")
    blocks = torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)
    ones = torch.ones_like(blocks)
    data = LMData(blocks, ones, blocks.clone(), meta={"source": str(path), "block_size": block_size})
    return data.subset(slice(0, n_blocks - n_val)), data.subset(slice(n_blocks - n_val, n_blocks))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def prompt_response_jsonl(path: str | Path, tokenizer: Any, max_length: int = 256, prompt_key: str = "prompt",
                          response_key: str | None = None) -> LMData:
    """Load ``{"prompt": ..., "response": ...}`` lines (``completion`` is accepted for the response). The loss
    covers the response and its EOS; prompt and padding tokens get label -100. Sequences longer than
    ``max_length`` are cut (the prompt is kept whole when it fits)."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    ids_list, lab_list, plens = [], [], []
    for i, row in enumerate(rows):
        key = response_key or next((k for k in ("response", "completion") if k in row), None)
        if prompt_key not in row or key is None or key not in row:
            raise ValueError(f"{path} line {i + 1}: needs keys {prompt_key!r} and 'response' (or 'completion'); "
                           f"has {sorted(row)}")
        p = tokenizer(str(row[prompt_key]), add_special_tokens=False)["input_ids"]
        r = tokenizer(str(row[key]), add_special_tokens=False)["input_ids"]
        if eos is not None:
            r = r + [eos]
        seq = (p + r)[:max_length]
        n_p = min(len(p), len(seq))
        ids_list.append(seq)
        lab_list.append([IGNORE] * n_p + seq[n_p:])
        plens.append(n_p)
    length = max(len(s) for s in ids_list)
    n = len(ids_list)
    input_ids = torch.full((n, length), pad, dtype=torch.long)
    labels = torch.full((n, length), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(ids_list, lab_list)):
        input_ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(s)] = 1
    return LMData(input_ids, mask, labels, torch.tensor(plens), meta={"source": str(path)})


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, falling back to EOS (decoder-only tokenizers often have no pad token)."""
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if v is not None:
            return int(v)
    raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")


# -- vocabularies ---------------------------------------------------------------------------------------------
def vocab_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's token -> id map (its contents, not only its size)."""
    vocab = tokenizer.get_vocab()
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def real_vocab_size(tokenizer: Any) -> int:
    """Number of ids the tokenizer can produce (its vocabulary incl. added tokens): ``len(tokenizer)``."""
    return len(tokenizer)


def check_same_tokenizer(student_tok: Any, teacher_tok: Any) -> int:
    """Refuse to distil token distributions across different tokenizers; returns the shared real vocab size.

    Compares the token -> id maps by hash, so two vocabularies of equal size but different contents are refused."""
    a, b = vocab_fingerprint(student_tok), vocab_fingerprint(teacher_tok)
    if a != b:
        na = getattr(student_tok, "name_or_path", "") or type(student_tok).__name__
        nb = getattr(teacher_tok, "name_or_path", "") or type(teacher_tok).__name__
        raise ValueError(
            f"the student tokenizer {na!r} ({len(student_tok)} tokens, vocab sha256 {a[:12]}) and the teacher "
            f"tokenizer {nb!r} ({len(teacher_tok)} tokens, vocab sha256 {b[:12]}) differ: token-level distillation "
            "needs one shared tokenizer (use sequence-level KD on decoded text instead)")
    return real_vocab_size(student_tok)


def align_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Slice (B, L, V_model) logits to the tokenizer's real ``vocab_size`` (models often pad their embedding
    matrix to a multiple of 64 or 128); a head narrower than the tokenizer is padded with -inf columns (ids the
    model cannot produce; the divergences zero such entries)."""
    v = logits.shape[-1]
    if v == vocab_size:
        return logits
    if v > vocab_size:
        return logits[..., :vocab_size]
    pad = logits.new_full((*logits.shape[:-1], vocab_size - v), -math.inf)
    return torch.cat([logits, pad], dim=-1)


def trim_padding(batch: Batch) -> Batch:
    """The batch cut to its longest row (right padding: the last position any attention mask covers), with its
    labels and per-token ``meta`` (``teacher_top1``); a function of the rows alone, so a resumed run sees the same
    batches."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    covered = mask.ne(0).any(0)
    width = int(covered.nonzero().max()) + 1 if bool(covered.any()) else 1
    width = max(width, 2)  # a shifted loss needs two positions
    if width >= ids.shape[1]:
        return batch
    inputs = {k: (v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 else v)
              for k, v in batch.inputs.items()}
    meta = dict(batch.meta)
    if isinstance(meta.get("teacher_top1"), torch.Tensor):
        meta["teacher_top1"] = meta["teacher_top1"][:, :width]
    labels = batch.labels[:, :width] if batch.labels is not None else None
    return Batch(inputs, labels, batch.indices, meta)


def head_transform(model: nn.Module) -> tuple[float, float | None]:
    """What a Hugging Face causal LM does to its head's output, read from its config: (scale, softcap) with logits
    = softcap tanh(scale z / softcap). ``logit_scale`` (Cohere: times it), ``logits_scaling`` (Granite: divided by
    it), ``final_logit_softcapping`` (Gemma 2 and 3); (1.0, None) for a model with none of them."""
    cfg = getattr(model, "config", None)
    scale = 1.0
    value = getattr(cfg, "logit_scale", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        scale *= float(value)
    value = getattr(cfg, "logits_scaling", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
        scale /= float(value)
    cap = getattr(cfg, "final_logit_softcapping", None)
    return scale, (float(cap) if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap else None)


@torch.no_grad()
def check_head(model: nn.Module, decoder: nn.Module, head: nn.Linear, ids: torch.Tensor, mask: torch.Tensor,
               scale: float = 1.0, softcap: float | None = None) -> None:
    """Refuse a model whose logits are not its head applied to its decoder's output, followed by the logit scale and
    soft-cap its config names (:func:`head_transform`): compared once, in eval mode, on the first row's first
    tokens."""
    was_training = model.training
    model.eval()
    try:
        want = model(input_ids=ids, attention_mask=mask).logits.float()
        got = head(decoder(input_ids=ids, attention_mask=mask).last_hidden_state).float() * scale
        if softcap is not None:
            got = softcap * torch.tanh(got / softcap)
    finally:
        model.train(was_training)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-5):
        raise ValueError(f"chunk_tokens: {type(model).__name__}'s logits are not its output head applied to its "
                         "decoder's hidden states (with the logit scale and soft-cap its config names); drop "
                         "data.chunk_tokens for it")


# -- task -----------------------------------------------------------------------------------------------------
class LMMetrics:
    """Perplexity (exp of the mean next-token NLL) and top-1 agreement with the teacher, over valid tokens."""

    def __init__(self, teacher: nn.Module | None = None, task: CausalLM | None = None) -> None:
        self.teacher = teacher
        self.task = task
        self.nll = 0.0
        self.tokens = 0
        self.agree = 0
        self.agree_tokens = 0

    @torch.no_grad()
    def update(self, outputs: torch.Tensor | HiddenStates, batch: Batch) -> None:
        if isinstance(outputs, HiddenStates):
            self._update_chunked(outputs, batch)
            return
        z = outputs[:, :-1].float()
        y = batch.labels[:, 1:]
        valid = y != IGNORE
        if not bool(valid.any()):
            return
        nll = torch.nn.functional.cross_entropy(z[valid], y[valid], reduction="sum")
        self.nll += float(nll)
        self.tokens += int(valid.sum())
        top1 = batch.meta.get("teacher_top1")
        if top1 is None and self.teacher is not None and self.task is not None:
            self.teacher.eval()
            top1 = self.task.forward(self.teacher, batch).argmax(-1)
        if top1 is not None:
            self.agree += int((z.argmax(-1) == top1[:, :-1])[valid].sum())
            self.agree_tokens += int(valid.sum())

    def _update_chunked(self, outputs: HiddenStates, batch: Batch) -> None:
        """The same sums from hidden states and head, a chunk of valid tokens at a time."""
        y = batch.labels[:, 1:]
        valid = y != IGNORE
        if not bool(valid.any()):
            return
        rows = outputs.hidden[:, :-1][valid]
        targets = y[valid]
        top1 = batch.meta.get("teacher_top1")
        if top1 is None and self.teacher is not None and self.task is not None:
            self.teacher.eval()
            t_out = self.task.forward(self.teacher, batch)
            top1 = t_out.argmax() if isinstance(t_out, HiddenStates) else t_out.argmax(-1)
        top1_rows = None if top1 is None else top1[:, :-1][valid]
        for part, z in outputs.chunks(rows):
            z = z.float()
            self.nll += float(torch.nn.functional.cross_entropy(z, targets[part], reduction="sum"))
            if top1_rows is not None:
                self.agree += int((z.argmax(-1) == top1_rows[part]).sum())
        self.tokens += int(valid.sum())
        if top1_rows is not None:
            self.agree_tokens += int(valid.sum())

    def compute(self) -> dict[str, float]:
        out = {"nll": self.nll / max(self.tokens, 1)}
        out["perplexity"] = math.exp(min(out["nll"], 50.0))
        out["tokens"] = float(self.tokens)
        if self.agree_tokens:
            out["teacher_agreement"] = self.agree / self.agree_tokens
        return out


class CausalLM:
    """The causal-LM task for Hugging Face models (anything called as ``model(input_ids=, attention_mask=)``
    returning ``.logits`` or a tensor). ``vocab_size``: the tokenizer's real vocabulary (logits are sliced or
    padded to it); ``agreement_teacher``: a model whose top-1 tokens evaluation compares with.

    ``chunk_tokens``: return the models' final hidden states and output heads (:class:`HiddenStates`) instead of
    logits, so the losses and metrics compute logits ``chunk_tokens`` token rows at a time (Hugging Face causal LMs
    only: ``get_decoder()`` and ``get_output_embeddings()``). ``pad_to_batch``: cut every training batch to its
    longest row (the data is padded to the dataset's longest); evaluation and cache builds keep the stored width.
    ``strict_chunks``: refuse a model whose logits are not its head on its hidden states (a soft-cap, a logit
    scale); False (``data.chunk_tokens: auto``): give that model's full logits instead (the losses accept a
    teacher's or a student's logits beside the other model's hidden states).
    """

    primary_metric = "perplexity"
    higher_is_better = False

    def __init__(self, vocab_size: int, agreement_teacher: nn.Module | None = None, chunk_tokens: int | None = None,
                 pad_to_batch: bool = True, strict_chunks: bool = True):
        self.vocab_size = int(vocab_size)
        self.agreement_teacher = agreement_teacher
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        self.pad_to_batch = bool(pad_to_batch)
        self.strict_chunks = bool(strict_chunks)
        self._heads_checked: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._dense_models: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # failed the head check, not strict

    def num_examples(self, data: LMData) -> int:
        return len(data)

    def fetch(self, data: LMData, indices: torch.Tensor) -> Batch:
        idx = indices.long().cpu()
        inputs = {"input_ids": data.input_ids[idx], "attention_mask": data.attention_mask[idx],
                  "prompt_lengths": data.prompt_lengths[idx]}
        meta = {}
        if "teacher_top1" in data.meta:
            meta["teacher_top1"] = data.meta["teacher_top1"][idx]
        if "route" in data.meta:  # each row's mixture member (teacher.mixture, route: column)
            meta["route"] = data.meta["route"][idx]
        return Batch(inputs, data.labels[idx], indices, meta)

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        return trim_padding(batch) if train and self.pad_to_batch else batch

    def loss_tokens(self, batch: Batch) -> int:
        """The batch's loss-bearing tokens: shifted labels that are not -100 (what token means divide by)."""
        return 0 if batch.labels is None else int((batch.labels[:, 1:] != IGNORE).sum())

    def guard_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """What a teacher cache compares (its input guard): the tokens of each row with padding zeroed, so a
        training batch cut to its longest row matches the rows stored at the dataset's width."""
        guarded = dict(batch.inputs)
        guarded["input_ids"] = guarded["input_ids"] * (guarded["attention_mask"] != 0)
        return guarded

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor | HiddenStates:
        if self.chunk_tokens is not None and model not in self._dense_models:
            try:
                return self.hidden_states(model, batch)
            except ValueError:
                if self.strict_chunks:
                    raise
                self._dense_models.add(model)
        out = model(input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"])
        logits = out.logits if hasattr(out, "logits") else out
        return align_vocab(logits, self.vocab_size)

    def hidden_states(self, model: nn.Module, batch: Batch) -> HiddenStates:
        """The model's final hidden states and output head (its decoder's output; no logits computed)."""
        get_decoder = getattr(model, "get_decoder", None)
        head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
        if not callable(get_decoder) or not isinstance(head, nn.Linear):
            raise ValueError(f"chunk_tokens needs a Hugging Face causal LM (get_decoder() and a linear "
                             f"get_output_embeddings()); {type(model).__name__} has not both")
        ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        scale, softcap = head_transform(model)
        if model not in self._heads_checked:
            check_head(model, get_decoder(), head, ids[:1, :8], mask[:1, :8], scale, softcap)
            self._heads_checked.add(model)
        hidden = get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        return HiddenStates(hidden, head.weight, head.bias, self.vocab_size, self.chunk_tokens, scale, softcap)

    def new_metrics(self) -> LMMetrics:
        return LMMetrics(self.agreement_teacher, self)
