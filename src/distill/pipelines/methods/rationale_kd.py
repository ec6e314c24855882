"""Rationale / sequence-level distillation as data condensation: a teacher corpus of rationales and labels, a
multi-task student loss, and a selected subset of the corpus.

Row 20 of ../shared/methods/llm.md. The survey it names (Knowledge Distillation and Dataset Distillation of Large
Language Models, 2025, arXiv 2504.14772) has no code; the component is *reconstructed* from the methods it surveys:
"Distilling step-by-step" (Hsieh et al. 2023, arXiv 2305.02301; official code google-research/distilling-step-by-
step, ``model_utils.py`` / ``run.py``, read through the spec), sequence-level KD, and the survey's "generative
synthesis" view of dataset distillation. Re-implemented here in our own words.

* **Teacher corpus** (``teacher_rationales`` stage): for each training sentence x_i the teacher is prompted with 4
  chain-of-thought demonstrations ("Sentence: ... Reasoning: ... Answer: positive") and continues
  "Reasoning:" greedily (<= ``max_tokens``) into a rationale r_i; then, after "Answer:", its label
  y^_i = argmax_c log p_T(c | prompt, r_i) over the class words, with the margin
  m_i = log p_T(y^_i | ...) - max_{c != y^_i} log p_T(c | ...) (a confidence score). Reading the label from the
  class-word log-probabilities instead of parsing free text is an adaptation (a 135M teacher often stops early).
* **Multi-task loss** (:func:`rationale_loss`), one student f with two task prefixes:

      L = alpha * CE(f("predict: " + x), y) + (1 - alpha) * CE(f("explain: " + x), r^)

  each CE a token mean over the target tokens only (prompt and padding masked, -100), y the gold label
  (``label_type: gt``, the code's default) or the teacher's (``llm``). Rationales are used in training only; the
  prediction reads the "predict:" prefix alone (:func:`predict_labels`: the class word with the highest logit
  after "predict: x\\nanswer:"). As in the code each example gives two sequences to the same step (a "pred" and an
  "expl" one); with alpha = 1 the expl sequences are not run (their gradient is zero anyway).
* **Condensation** (``rationale_subset`` stage, :func:`select_subset`): choose S of size n by ``random`` or by the
  teacher's ``margin`` (the n largest) or the inverse, and train on S. The selection rule is a proposal of the spec,
  not from the survey. A subset is returned sorted, so n = all under ``random`` is the whole corpus in its order
  and trains exactly as the whole corpus does.

Adaptation for 2 CPU cores: the student is a small Llama trained from scratch whose vocabulary is the teacher-
tokenizer tokens that occur in the corpus and the evaluation inputs (:class:`CompactVocab`, others map to one
unknown id); the teacher's tokenizer cuts the text, so the student sees the teacher's tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from distill.config import Strict
from distill.llm.textgen import TextGenerator, chatml, text_columns, texts_of
from distill.pipelines.stage import Artefact, StageContext, StageKind, StageOutput, file_identity, register_stage_kind

__all__ = ["CompactVocab", "PREFIXES", "cot_messages", "encode_pairs", "predict_labels", "rationale_loss",
           "select_subset", "teacher_rationale", "train_rationale_student"]

IGNORE = -100
PREFIXES = {"predict": ("predict: ", "\nanswer:"), "explain": ("explain: ", "\nreasoning:")}

#: four demonstrations written for this project in the SST style (lower-cased, tokenised)
DEMOS = [
    ("a gripping , beautifully acted story that stays with you long after it ends .",
     "gripping and beautifully acted are praise , and a story that stays with you is a good sign .", "positive"),
    ("the plot is a mess and every joke falls flat .",
     "a messy plot and jokes that fall flat mean the film fails at what it tries .", "negative"),
    ("it 's not a great film , but it has real charm and a big heart .",
     "the complaint is mild and the writer praises its charm and heart .", "positive"),
    ("two hours of tedium with nothing to show for it .",
     "tedium for two hours with no payoff is a clear complaint .", "negative"),
]


# --------------------------------------------------------------------------------------------- the teacher corpus


def cot_messages(sentence: str, demos: Sequence[tuple[str, str, str]] = DEMOS) -> list[dict[str, str]]:
    shots = "\n\n".join(f"Sentence: {s}\nReasoning: {r}\nAnswer: {y}" for s, r, y in demos)
    return [{"role": "user", "content": "Decide whether each movie review sentence is positive or negative. "
             f"Reason briefly, then answer.\n\n{shots}\n\nSentence: {sentence}"}]


def teacher_rationale(gen: TextGenerator, sentence: str, class_names: Sequence[str],
                      max_tokens: int = 48) -> tuple[str, int, float]:
    """(rationale, teacher label, teacher margin) for one sentence: greedy "Reasoning:" continuation, then the
    class word with the highest log-probability after "Answer:"."""
    msgs = cot_messages(sentence)
    text = gen.complete(chatml(msgs, "Reasoning:"), max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0,
                        stop=["Answer", "\n\n", "<|im_end|>", "Sentence:"], allow_eos=False)
    rationale = " ".join(text.split()).strip()
    lp = gen.label_logprobs(chatml(msgs, f"Reasoning: {rationale}\nAnswer:"), [f" {c}" for c in class_names])
    best = max(range(len(lp)), key=lp.__getitem__)
    margin = lp[best] - max(v for i, v in enumerate(lp) if i != best)
    return rationale.lower(), best, float(margin)


def select_subset(scores: Sequence[float], n: int, rule: Literal["random", "margin", "low_margin"],
                  seed: int = 0) -> list[int]:
    """``n`` corpus indices, sorted: uniformly drawn (``random``, seeded), the n largest scores (``margin``) or
    the n smallest (``low_margin``); ties broken by index."""
    m = len(scores)
    if not 0 < n <= m:
        raise ValueError(f"subset size n={n} must be in [1, {m}]")
    if rule == "random":
        chosen = random.Random(seed).sample(range(m), n)
    elif rule in ("margin", "low_margin"):
        sign = -1.0 if rule == "margin" else 1.0
        chosen = sorted(range(m), key=lambda i: (sign * float(scores[i]), i))[:n]
    else:
        raise ValueError(f"unknown selection rule {rule!r}: random, margin or low_margin")
    return sorted(chosen)


# -------------------------------------------------------------------------------------------------- the student


class CompactVocab:
    """Teacher token ids -> a dense student vocabulary of the ids seen (0 pad, 1 eos, 2 unknown)."""

    PAD, EOS, UNK = 0, 1, 2

    def __init__(self, sequences: Sequence[Sequence[int]]):
        seen = sorted({t for s in sequences for t in s})
        self.index = {t: i + 3 for i, t in enumerate(seen)}

    def __len__(self) -> int:
        return len(self.index) + 3

    def __call__(self, ids: Sequence[int]) -> list[int]:
        return [self.index.get(t, self.UNK) for t in ids]


def encode_pairs(tokenize: Any, vocab: CompactVocab, texts: Sequence[str], targets: Sequence[str], task: str,
                 max_length: int = 96) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` / ``labels`` (right-padded) of "<prefix>x<suffix> target<eos>", with
    labels -100 on the prompt and on padding, and ``prompt_len``."""
    pre, suf = PREFIXES[task]
    rows, labs, plens = [], [], []
    for x, y in zip(texts, targets, strict=True):
        p = vocab(tokenize(pre + x + suf))[: max_length - 8]
        t = (vocab(tokenize(" " + y)) + [vocab.EOS])[: max_length - len(p)]
        rows.append(p + t)
        labs.append([IGNORE] * len(p) + t)
        plens.append(len(p))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), vocab.PAD, dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, labs, strict=True)):
        ids[i, : len(r)], lab[i, : len(y)], att[i, : len(r)] = torch.tensor(r), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": att, "labels": lab, "prompt_len": torch.tensor(plens)}


def token_mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shifted next-token CE averaged over the target tokens (labels != -100)."""
    z, y = logits[:, :-1].float(), labels[:, 1:]
    if not bool((y != IGNORE).any()):
        return z.sum() * 0.0
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


def rationale_loss(pred_logits: torch.Tensor, pred_labels: torch.Tensor, expl_logits: torch.Tensor | None,
                   expl_labels: torch.Tensor | None, alpha: float) -> dict[str, torch.Tensor]:
    """L = alpha * CE_pred + (1 - alpha) * CE_expl (token means over target tokens); ``expl_*`` may be None only
    when alpha = 1."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pred = token_mean_ce(pred_logits, pred_labels)
    if alpha == 1.0:
        return {"loss": pred, "pred": pred.detach()}
    if expl_logits is None or expl_labels is None:
        raise ValueError("alpha < 1 needs the explain sequences")
    expl = token_mean_ce(expl_logits, expl_labels)
    return {"loss": alpha * pred + (1.0 - alpha) * expl, "pred": pred.detach(), "expl": expl.detach()}


@torch.no_grad()
def predict_labels(model: torch.nn.Module, batch: dict[str, torch.Tensor], class_ids: Sequence[int],
                   chunk: int = 128) -> torch.Tensor:
    """The class whose first target token has the highest logit right after the "predict:" prompt."""
    model.eval()
    out = []
    for s in range(0, batch["input_ids"].shape[0], chunk):
        ids, att = batch["input_ids"][s:s + chunk], batch["attention_mask"][s:s + chunk]
        pl = batch["prompt_len"][s:s + chunk]
        n = int(pl.max())  # only the prompts are needed, and only the last prompt position goes through the head
        rows = torch.arange(ids.shape[0])
        if hasattr(model, "model") and hasattr(model, "lm_head"):
            hidden = model.model(input_ids=ids[:, :n], attention_mask=att[:, :n]).last_hidden_state
            last = model.lm_head(hidden[rows, pl - 1])[:, list(class_ids)]
        else:
            last = model(input_ids=ids[:, :n], attention_mask=att[:, :n]).logits[rows, pl - 1][:, list(class_ids)]
        out.append(last.argmax(-1))
    model.train()
    return torch.cat(out)


def train_rationale_student(model: torch.nn.Module, pred: dict[str, torch.Tensor], expl: dict[str, torch.Tensor],
                            subset: Sequence[int], *, alpha: float, steps: int, batch_size: int, lr: float,
                            seed: int, weight_decay: float = 0.01,
                            on_eval: Any = None, eval_every: int = 0) -> list[dict[str, float]]:
    """AdamW with a linear decay; each step draws ``batch_size`` examples of ``subset`` (seeded by (seed, step)),
    runs their predict rows and (alpha < 1) their explain rows, and minimises :func:`rationale_loss`."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / max(steps, 1))
    idx = torch.tensor(list(subset), dtype=torch.long)
    log = []
    model.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        b = idx[torch.randint(len(idx), (batch_size,), generator=g)]

        def rows(t: dict[str, torch.Tensor], b: torch.Tensor = b) -> tuple[torch.Tensor, ...]:
            n = int(t["attention_mask"][b].sum(1).max())
            return t["input_ids"][b, :n], t["attention_mask"][b, :n], t["labels"][b, :n]

        pi, pa, py = rows(pred)
        pl = model(input_ids=pi, attention_mask=pa).logits
        el = ey = None
        if alpha < 1.0:
            ei, ea, ey = rows(expl)
            el = model(input_ids=ei, attention_mask=ea).logits
        out = rationale_loss(pl, py, el, ey, alpha)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_eval is not None and eval_every and (step + 1) % eval_every == 0:
            log.append({"step": step + 1, **on_eval()})
    return log


# -------------------------------------------------------------------------------------------------------- stages


class CorpusOptions(Strict):
    teacher: str = Field(..., description="the GGUF chat model file")
    data: str = Field(..., description="labelled sentences (SST format or tsv/csv)")
    sentences: int = Field(200, gt=0, description="the first `sentences` of the seeded shuffle of `data`")
    class_names: list[str] = Field(default_factory=lambda: ["negative", "positive"], min_length=2)
    max_tokens: int = Field(48, gt=0)
    chunk: int = Field(10, gt=0, description="sentences per checkpoint")


@register_stage_kind
class TeacherRationales(StageKind):
    name = "teacher_rationales"
    summary = "rationale KD: the teacher's 4-shot chain-of-thought rationale, label and margin per sentence"
    Options = CorpusOptions
    inputs: dict[str, str] = {}

    def identity(self, ctx: StageContext, options: CorpusOptions) -> dict[str, str]:
        return {"teacher#file": file_identity(options.teacher, ctx.base_dir),
                "data#file": file_identity(options.data, ctx.base_dir)}

    def run(self, ctx: StageContext, options: CorpusOptions, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.llm.textgen import GGUFChat
        from distill.pipelines.methods.symbolic_kd import shot_pool

        texts, labels = shot_pool(str(ctx.resolve(options.data)), options.sentences, ctx.seed)
        state = ctx.load_state() or {"done": 0, "rationale": [], "teacher_label": [], "margin": []}
        with GGUFChat(ctx.resolve(options.teacher)) as gen:
            while state["done"] < len(texts):
                stop = min(state["done"] + options.chunk, len(texts))
                for i in range(state["done"], stop):
                    r, y, m = teacher_rationale(gen, texts[i], options.class_names, options.max_tokens)
                    state["rationale"].append(r)
                    state["teacher_label"].append(y)
                    state["margin"].append(m)
                state["done"] = stop
                ctx.save_state(state)
                ctx.log(f"{ctx.name}: {stop}/{len(texts)} rationales")
        agree = sum(int(a == b) for a, b in zip(state["teacher_label"], labels, strict=True)) / len(labels)
        table = {**text_columns(texts), **text_columns(state["rationale"], "rationale"),
                 "label": torch.tensor(labels, dtype=torch.int64),
                 "teacher_label": torch.tensor(state["teacher_label"], dtype=torch.int64),
                 "margin": torch.tensor(state["margin"], dtype=torch.float64)}
        return StageOutput({"corpus": table}, meta={"sentences": len(texts), "teacher_label_accuracy": agree,
                                                    "class_names": options.class_names})


class SubsetOptions(Strict):
    n: int = Field(..., gt=0)
    rule: Literal["random", "margin", "low_margin"] = "random"


@register_stage_kind
class RationaleSubset(StageKind):
    name = "rationale_subset"
    summary = "rationale KD: a condensed subset of the teacher corpus (random or by teacher margin)"
    Options = SubsetOptions
    inputs = {"corpus": "a teacher_rationales stage"}

    def run(self, ctx: StageContext, options: SubsetOptions, inputs: dict[str, Artefact]) -> StageOutput:
        corpus = inputs["corpus"].table("corpus")
        chosen = select_subset(corpus["margin"].tolist(), options.n, options.rule, ctx.seed)
        return StageOutput({"selection": {"index": torch.tensor(chosen, dtype=torch.int64)}},
                           meta={"n": options.n, "rule": options.rule})


def corpus_texts(table: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    return texts_of(table), texts_of(table, "rationale")
