"""PGKD: performance-guided knowledge distillation: the LLM writes new labelled examples aimed at the student's
errors, the student is retrained, early stopping on validation.

Paper: "Performance-Guided LLM Knowledge Distillation for Efficient Text Classification at Scale" (EMNLP 2024
Industry, arXiv 2411.05045). No official code exists; the loop is *reconstructed* from the abstract and secondary
summaries, as the spec (../shared/methods/llm.md row 40) lays it out; every detail not in the abstract is
unverified (marked below). Re-implemented here in our own words.

Loop (``pgkd`` stage, :func:`pgkd_loop`)::

    S_0 <- fit(D_tr);  best <- F1_macro(S_0, D_val);  wait <- 0
    for step t = 1 .. max_steps:
        R <- per-class precision / recall / F1 of S_{t-1} on D_val                 (the "gradual evaluation checks")
        for each class c:
            C_c <- up to k correctly classified val samples of c
            E_c <- up to k val samples of true class c that S misclassified, with the wrong label   (errors)
            H_c <- up to k hard negatives: val samples predicted c but truly != c, sorted by
                   P_S(c | x) descending                                          (definition assumed, spec)
            D_new += m parsed generations of T(prompt(task, labels, R, C_c, E_c, H_c, "write a new example of c"))
        D_tr <- D_tr + D_new (deduplicated against D_tr, D_val and earlier generations; unparseable dropped)
        S_t <- fit(D_tr);  if F1(S_t, D_val) > best: best, t* <- ..., wait <- 0  else: wait += 1
        if wait >= patience: break
    return S_{t*} (the best-validation student, not the last)

There is no soft-label loss: the student is trained with plain CE on the original and generated labels (here:
logistic regression on all-MiniLM-L6-v2 embeddings, the spec's adaptation of the paper's BERT-base). Each generation
asks for ONE example (sampled m times with distinct seeds) rather than m in one answer (an adaptation: a 135M teacher
does not reliably write numbered lists). The test set never enters a prompt; the validation set does, so validation
scores are optimistic and only test scores are reported.

The unguided control (``unguided_generate`` stage, the spec's arm (b)): "write a {label} movie review sentence",
the same number of examples per class as PGKD kept up to its best step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from distill.config import Strict
from distill.llm.textgen import TextGenerator, clean_sentence, text_columns
from distill.pipelines.stage import Artefact, StageContext, StageKind, StageOutput, file_identity, register_stage_kind

__all__ = ["class_report", "correct_samples", "hard_negatives", "macro_f1", "misclassified", "pgkd_loop",
           "pgkd_messages", "unguided_messages"]


# ------------------------------------------------------------------------------------------------------ reports


def class_report(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> list[dict[str, float]]:
    """Per class: precision tp/(tp+fp), recall tp/(tp+fn), F1 2PR/(P+R) (0 where undefined), support."""
    out = []
    for c in range(k):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out.append({"precision": prec, "recall": rec, "f1": f1, "support": float(tp + fn)})
    return out


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> float:
    return sum(r["f1"] for r in class_report(y_true, y_pred, k)) / k


def misclassified(y_true: Sequence[int], y_pred: Sequence[int], c: int) -> list[int]:
    """Indices of validation samples of true class ``c`` that the student got wrong."""
    return [i for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)) if t == c and p != c]


def correct_samples(y_true: Sequence[int], y_pred: Sequence[int], c: int) -> list[int]:
    return [i for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)) if t == c and p == c]


def hard_negatives(y_true: Sequence[int], proba: np.ndarray, c: int) -> list[int]:
    """Validation samples predicted as ``c`` (argmax) whose true class is not ``c``, most confident in ``c``
    first (ties by index)."""
    pred = np.asarray(proba).argmax(1)
    idx = [i for i in range(len(y_true)) if pred[i] == c and y_true[i] != c]
    return sorted(idx, key=lambda i: (-float(proba[i, c]), i))


# ------------------------------------------------------------------------------------------------------ prompts


def pgkd_messages(task: str, class_names: Sequence[str], report: list[dict[str, float]], c: int,
                  correct: Sequence[str], errors: Sequence[tuple[str, str]], hard: Sequence[tuple[str, str]]
                  ) -> list[dict[str, str]]:
    rep = "\n".join(f"- {n}: precision {r['precision']:.2f}, recall {r['recall']:.2f}, F1 {r['f1']:.2f}"
                    for n, r in zip(class_names, report, strict=True))
    parts = [f"Task: {task}. Labels: {', '.join(class_names)}.", f"The classifier's validation report:\n{rep}"]
    if correct:
        parts.append(f"Examples of '{class_names[c]}' it gets right:\n" + "\n".join(f"- {t}" for t in correct))
    if errors:
        parts.append(f"Examples of '{class_names[c]}' it gets wrong:\n"
                     + "\n".join(f"- {t} (it said: {w})" for t, w in errors))
    if hard:
        parts.append(f"Sentences it wrongly calls '{class_names[c]}':\n"
                     + "\n".join(f"- {t} (truly: {w})" for t, w in hard))
    parts.append(f"Write one new short movie review sentence whose label is clearly '{class_names[c]}', the kind "
                 "the classifier needs to learn from. Reply with the sentence only.")
    return [{"role": "user", "content": "\n\n".join(parts)}]


def unguided_messages(label: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write one new short {label} movie review sentence. "
             "Reply with the sentence only."}]


# --------------------------------------------------------------------------------------------------------- loop


def pgkd_loop(gen: TextGenerator, fit: Callable[[list[str], list[int]], Any], train: tuple[list[str], list[int]],
              val: tuple[list[str], list[int]], class_names: Sequence[str], *, task: str, max_steps: int = 10,
              patience: int = 3, per_class: int = 10, show: int = 3, max_tokens: int = 40, top_p: float = 0.9,
              temperature: float = 1.0, seed: int = 0, state: dict[str, Any] | None = None,
              save: Callable[[dict[str, Any]], None] | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the PGKD loop (module docstring). ``fit(texts, labels)`` returns a student with ``predict_proba``
    (columns = classes 0..K-1). Resumable: ``state`` is what ``save`` was last given. Returns the state:
    generated texts/labels/steps, the validation history, ``best_step`` and the prompt log."""
    k = len(class_names)
    vt, vy = val
    st = state or {"step": 0, "texts": [], "labels": [], "steps": [], "history": [], "prompts": [],
                   "best_step": 0, "best": None, "wait": 0, "stopped": False}

    def student_at(step: int) -> Any:
        keep = [i for i, s in enumerate(st["steps"]) if s <= step]
        return fit(train[0] + [st["texts"][i] for i in keep], train[1] + [st["labels"][i] for i in keep])

    current = student_at(st["step"])
    if st["best"] is None:
        pv = np.asarray(current.predict_proba(vt))
        st["best"] = macro_f1(vy, pv.argmax(1).tolist(), k)
        st["history"].append({"step": 0, "val_macro_f1": st["best"], "added": 0})
    seen = set(train[0]) | set(vt) | set(st["texts"])
    while st["step"] < max_steps and not st["stopped"]:
        step = st["step"] + 1
        proba = np.asarray(current.predict_proba(vt))
        pred = proba.argmax(1).tolist()
        report = class_report(vy, pred, k)
        added = 0
        for c in range(k):
            rng = random.Random(seed * 1_000_003 + step * 101 + c)
            ok = correct_samples(vy, pred, c)
            ok = rng.sample(ok, min(show, len(ok)))
            err = misclassified(vy, pred, c)
            err = rng.sample(err, min(show, len(err)))
            hard = hard_negatives(vy, proba, c)[:show]
            msgs = pgkd_messages(task, class_names, report, c, [vt[i] for i in ok],
                                 [(vt[i], class_names[pred[i]]) for i in err],
                                 [(vt[i], class_names[vy[i]]) for i in hard])
            st["prompts"].append(msgs[0]["content"])
            for j in range(per_class):
                text = clean_sentence(gen.chat(msgs, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                               seed=seed * 1_000_003 + step * 10_007 + c * 101 + j))
                if len(text.split()) < 2 or text in seen:
                    continue
                seen.add(text)
                st["texts"].append(text)
                st["labels"].append(c)
                st["steps"].append(step)
                added += 1
        current = student_at(step)
        f1 = macro_f1(vy, np.asarray(current.predict_proba(vt)).argmax(1).tolist(), k)
        st["history"].append({"step": step, "val_macro_f1": f1, "added": added})
        if f1 > st["best"]:
            st["best"], st["best_step"], st["wait"] = f1, step, 0
        else:
            st["wait"] += 1
        st["step"] = step
        st["stopped"] = st["wait"] >= patience
        log(f"pgkd step {step}: +{added} examples, val macro-F1 {f1:.4f} (best {st['best']:.4f} at "
            f"step {st['best_step']})")
        if save is not None:
            save(st)
    return st


def best_student_data(st: dict[str, Any], train: tuple[list[str], list[int]]) -> tuple[list[str], list[int]]:
    """The training set of the best-validation student: D_tr plus the generations up to ``best_step``."""
    keep = [i for i, s in enumerate(st["steps"]) if s <= st["best_step"]]
    return train[0] + [st["texts"][i] for i in keep], train[1] + [st["labels"][i] for i in keep]


class EmbeddingLR:
    """The spec's student: logistic regression on sentence embeddings (``embed`` maps texts to an array)."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], k: int, C: float = 1.0, seed: int = 0):
        self.embed, self.k, self.C, self.seed = embed, k, C, seed

    def fit(self, texts: list[str], labels: list[int]) -> EmbeddingLR:
        from sklearn.linear_model import LogisticRegression

        self.clf = LogisticRegression(C=self.C, max_iter=3000, random_state=self.seed)
        self.clf.fit(self.embed(texts), labels)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        p = self.clf.predict_proba(self.embed(texts))
        out = np.zeros((len(texts), self.k))
        out[:, self.clf.classes_] = p
        return out


# -------------------------------------------------------------------------------------------------------- stages


class PGKDOptions(Strict):
    teacher: str = Field(..., description="the GGUF chat model file")
    data: str = Field(..., description="labelled sentences; D_tr and D_val are drawn from them (seeded)")
    class_names: list[str] = Field(..., min_length=2)
    task: str = "classify the sentiment of a movie review sentence"
    train: int = Field(800, gt=0)
    val: int = Field(200, gt=0)
    max_steps: int = Field(10, gt=0)
    patience: int = Field(3, gt=0)
    per_class: int = Field(10, gt=0)
    show: int = Field(3, ge=0, description="correct / wrong / hard-negative samples shown per class")
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(40, gt=0)
    C: float = Field(1.0, gt=0, description="the student's inverse L2 strength")


def split_data(path: str, n_train: int, n_val: int, seed: int) -> tuple[tuple[list[str], list[int]],
                                                                        tuple[list[str], list[int]]]:
    from distill.pipelines.methods.symbolic_kd import shot_pool

    texts, labels = shot_pool(path, n_train + n_val, seed)
    return (texts[:n_train], labels[:n_train]), (texts[n_train:], labels[n_train:])


def minilm_embedder(cache: Path | None = None, chunk: int = 256) -> Callable[[list[str]], np.ndarray]:
    """all-MiniLM-L6-v2 sentence embeddings (L2-normalised), memoised per text; ``cache``: an ``.npz`` file that
    keeps them across processes and crashes (written after every ``chunk`` new texts)."""
    from distill.text.st_models import load_sentence_model

    model = load_sentence_model()
    memo: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            memo.update(zip(z["texts"].tolist(), z["vectors"], strict=True))

    def embed(xs: list[str]) -> np.ndarray:
        todo = [x for x in dict.fromkeys(xs) if x not in memo]
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            for x, e in zip(part, model.encode(part, batch_size=64, normalize_embeddings=True), strict=True):
                memo[x] = e
            if cache is not None:
                keys = list(memo)
                tmp = cache.with_name(cache.name + ".tmp.npz")
                np.savez(tmp, texts=np.array(keys), vectors=np.stack([memo[k] for k in keys]))
                tmp.replace(cache)
        return np.stack([memo[x] for x in xs])

    return embed


@register_stage_kind
class PGKD(StageKind):
    name = "pgkd"
    summary = "PGKD: teacher examples aimed at the student's validation errors, retrain, early stopping"
    Options = PGKDOptions
    inputs: dict[str, str] = {}

    def identity(self, ctx: StageContext, options: PGKDOptions) -> dict[str, str]:
        return {"teacher#file": file_identity(options.teacher, ctx.base_dir),
                "data#file": file_identity(options.data, ctx.base_dir)}

    def run(self, ctx: StageContext, options: PGKDOptions, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.llm.textgen import GGUFChat

        train, val = split_data(str(ctx.resolve(options.data)), options.train, options.val, ctx.seed)
        embed = minilm_embedder(ctx.work / "minilm.npz")
        k = len(options.class_names)

        def fit(texts: list[str], labels: list[int]) -> EmbeddingLR:
            return EmbeddingLR(embed, k, options.C, ctx.seed).fit(texts, labels)

        with GGUFChat(ctx.resolve(options.teacher)) as chat:
            st = pgkd_loop(chat, fit, train, val, options.class_names, task=options.task,
                           max_steps=options.max_steps, patience=options.patience, per_class=options.per_class,
                           show=options.show, max_tokens=options.max_tokens, top_p=options.top_p, seed=ctx.seed,
                           state=ctx.load_state(), save=ctx.save_state, log=ctx.log)
        if not st["texts"]:
            st["texts"], st["labels"], st["steps"] = [""], [0], [max_steps_never(options)]
        table = {**text_columns(st["texts"]), "label": torch.tensor(st["labels"], dtype=torch.int64),
                 "step": torch.tensor(st["steps"], dtype=torch.int64)}
        return StageOutput({"generated": table}, meta={"best_step": st["best_step"], "best_val_macro_f1": st["best"],
                                                       "history": st["history"], "prompts": len(st["prompts"]),
                                                       "class_names": options.class_names})


def max_steps_never(options: PGKDOptions) -> int:
    """The step number of a placeholder row (a table needs a row): after every real step, never kept."""
    return options.max_steps + 1


class UnguidedOptions(Strict):
    teacher: str = Field(..., description="the GGUF chat model file")
    class_names: list[str] = Field(..., min_length=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(40, gt=0)
    data: str = Field(..., description="the same labelled file as the pgkd stage (for deduplication)")
    train: int = Field(800, gt=0)
    val: int = Field(200, gt=0)


@register_stage_kind
class UnguidedGenerate(StageKind):
    name = "unguided_generate"
    summary = "PGKD's control: 'write a {label} review' examples, as many per class as PGKD kept"
    Options = UnguidedOptions
    inputs = {"pgkd": "a pgkd stage (how many examples per class)"}

    def identity(self, ctx: StageContext, options: UnguidedOptions) -> dict[str, str]:
        return {"teacher#file": file_identity(options.teacher, ctx.base_dir),
                "data#file": file_identity(options.data, ctx.base_dir)}

    def run(self, ctx: StageContext, options: UnguidedOptions, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.llm.textgen import GGUFChat

        art = inputs["pgkd"]
        g = art.table("generated")
        best = int(art.meta["best_step"])
        want = [int(((g["label"] == c) & (g["step"] <= best)).sum()) for c in range(len(options.class_names))]
        train, val = split_data(str(ctx.resolve(options.data)), options.train, options.val, ctx.seed)
        seen = set(train[0]) | set(val[0])
        st = ctx.load_state() or {"texts": [], "labels": [], "tries": [0] * len(want)}
        with GGUFChat(ctx.resolve(options.teacher)) as chat:
            for c, n in enumerate(want):
                while sum(1 for y in st["labels"] if y == c) < n and st["tries"][c] < 3 * n:
                    j = st["tries"][c]
                    msgs = unguided_messages(options.class_names[c])
                    text = clean_sentence(chat.chat(msgs, max_tokens=options.max_tokens, temperature=1.0,
                                                    top_p=options.top_p, seed=ctx.seed * 1_000_003 + c * 10_007 + j))
                    st["tries"][c] += 1
                    if len(text.split()) >= 2 and text not in seen:
                        seen.add(text)
                        st["texts"].append(text)
                        st["labels"].append(c)
                    ctx.save_state(st)
        texts = st["texts"] or [""]
        labels = st["labels"] or [-1]
        return StageOutput({"generated": {**text_columns(texts), "label": torch.tensor(labels, dtype=torch.int64)}},
                           meta={"wanted": want, "kept": len(st["texts"])})
