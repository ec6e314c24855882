"""Symbolic knowledge distillation: the teacher writes a corpus, a critic filters it, the student trains on it.

Paper: West et al., "Symbolic Knowledge Distillation: from General Language Models to Commonsense Models" (NAACL
2022, arXiv 2110.07178); official code peterwestai2/symbolic-knowledge-distillation (generation notebooks,
``purification_code/{classify,predict}.py``), read through the spec (../shared/methods/llm.md row 43);
re-implemented here in our own words.

Knowledge moves *as text*:

1. **Generate** (``symbolic_generate`` stage): for candidate i with intended label c_i = i mod K, the teacher is
   shown ``shots`` real sentences of label c_i drawn at random (seeded by (seed, i)) and asked for one new sentence
   of that label, sampled with top-p (paper: top_p 0.9 for events, few-shot prompts). Empty outputs, copies of a
   real sentence and duplicates are dropped (the code deduplicates per (event, relation)).
2. **Critic** (``critic_filter`` stage): a separately trained classifier scores each candidate,
   s_i = P_critic(acceptable | x_i). The paper's critic is RoBERTa-large-MNLI fine-tuned on human judgements of
   generated triples; here (an adaptation, no human labels exist) it is logistic regression on all-MiniLM-L6-v2
   embeddings of ``real`` labelled sentences and s_i = P(c_i | x_i), the probability of the *intended* label.
3. **Threshold at a target recall** (:func:`recall_threshold`): with calibration pairs (score, acceptable), the
   cutoff is the largest t with recall(t) = |{positives with s >= t}| / |positives| >= r*, i.e. the
   ceil(r* P)-th largest positive score. The code takes the mean of the cutoffs found on its validation and test
   sets; :func:`calibrated_threshold` does the same over ``splits`` disjoint halves of the calibration set.
   Calibration here (adaptation): real held-out sentences with their correct label are the positives, the same
   sentences with a flipped label the negatives. r* = 0.8 is the paper's "medium" filter, 0.5 its "high" one.
   Kept corpus: {x_i : s_i >= t}; a larger r* gives a lower t, hence a superset. The cutoff depends on the
   positives alone; the negatives give its estimated precision (:func:`calibrated_precision`: positives among the
   calibration pairs kept, the mean over the parts, as the official ``predict.py`` reports beside each recall).
4. **Student**: trained with its own loss on the kept corpus (the paper fine-tunes GPT-2 XL with causal-LM CE on
   the filtered triples). For the SST-2 adaptation the student is a model unlike the critic: TF-IDF features and
   logistic regression (:func:`tfidf_student`).

Reconstructed / adapted parts: sentence generation for a classification task instead of ATOMIC triples; the
critic's features and labels; calibration on correct vs flipped real labels; the student.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from distill.config import Strict
from distill.llm.textgen import TextGenerator, clean_sentence, text_columns, texts_of
from distill.pipelines.stage import Artefact, StageContext, StageKind, StageOutput, file_identity, register_stage_kind

__all__ = ["Critic", "calibrated_precision", "calibrated_threshold", "calibration_parts", "few_shot_messages",
           "generate_candidates", "recall_threshold", "teacher_few_shot_accuracy", "tfidf_student"]


# ----------------------------------------------------------------------------------------------------- threshold


def recall_threshold(scores: Sequence[float], positive: Sequence[bool], target_recall: float) -> float:
    """The largest cutoff t such that keeping ``score >= t`` keeps at least ``target_recall`` of the positives:
    the ceil(r* P)-th largest positive score."""
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    pos = sorted((float(s) for s, p in zip(scores, positive, strict=True) if p), reverse=True)
    if not pos:
        raise ValueError("recall_threshold needs at least one positive")
    k = max(1, math.ceil(target_recall * len(pos) - 1e-9))
    return pos[k - 1]


def calibration_parts(n: int, splits: int = 2, seed: int = 0) -> list[list[int]]:
    """``splits`` disjoint random parts of the positions 0 .. n-1 (the official code's validation and test sets)."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return [idx[j::splits] for j in range(splits)]


def calibrated_threshold(scores: Sequence[float], positive: Sequence[bool], target_recall: float,
                         splits: int = 2, seed: int = 0) -> float:
    """The mean of :func:`recall_threshold` over the :func:`calibration_parts` of the calibration set (the
    official code: the mean of its validation and test cutoffs); ``splits=1`` is the plain cutoff."""
    parts = calibration_parts(len(scores), splits, seed)
    cuts = [recall_threshold([scores[i] for i in p], [positive[i] for i in p], target_recall) for p in parts]
    return sum(cuts) / len(cuts)


def calibrated_precision(scores: Sequence[float], positive: Sequence[bool], cutoff: float, splits: int = 2,
                         seed: int = 0) -> float:
    """The precision the cutoff is expected to give: per calibration part, the share of positives among the pairs
    with ``score >= cutoff``, averaged over the parts that keep any (the official code's estimated precision, the
    mean over its validation and test sets); 1 when no part keeps anything (the end of a precision-recall curve)."""
    shares = []
    for p in calibration_parts(len(scores), splits, seed):
        kept = [bool(positive[i]) for i in p if scores[i] >= cutoff]
        if kept:
            shares.append(sum(kept) / len(kept))
    return sum(shares) / len(shares) if shares else 1.0


# ---------------------------------------------------------------------------------------------------- generation


def few_shot_messages(shots: Sequence[str], label_name: str, topic: str = "movie review") -> list[dict[str, str]]:
    lines = "\n".join(f"- {s}" for s in shots)
    return [{"role": "user", "content": f"Here are {len(shots)} {label_name} {topic} sentences:\n{lines}\n"
             f"Write one new short {label_name} {topic} sentence, different from these. "
             "Reply with the sentence only."}]


def generate_candidates(gen: TextGenerator, pool_texts: Sequence[str], pool_labels: Sequence[int],
                        class_names: Sequence[str], start: int, stop: int, *, shots: int = 5, seed: int = 0,
                        max_tokens: int = 32, temperature: float = 1.0, top_p: float = 0.9,
                        topic: str = "movie review") -> list[tuple[str, int]]:
    """Candidates ``start .. stop-1``: (cleaned text, intended label); each one seeded by (seed, i) alone, so a
    resumed loop draws what an uninterrupted one drew."""
    by_label: dict[int, list[str]] = {}
    for t, y in zip(pool_texts, pool_labels, strict=True):
        by_label.setdefault(int(y), []).append(t)
    out = []
    for i in range(start, stop):
        c = i % len(class_names)
        rng = random.Random(seed * 1_000_003 + i)
        chosen = rng.sample(by_label[c], min(shots, len(by_label[c])))
        text = gen.chat(few_shot_messages(chosen, class_names[c], topic), max_tokens=max_tokens,
                        temperature=temperature, top_p=top_p, seed=seed * 1_000_003 + i)
        out.append((clean_sentence(text), c))
    return out


def deduplicate(cands: Sequence[tuple[str, int]], real: Sequence[str]) -> list[int]:
    """Indices of the candidates kept: non-empty, not a real sentence, first occurrence of its text."""
    seen = set(real)
    keep = []
    for i, (t, _) in enumerate(cands):
        if len(t.split()) < 2 or t in seen:
            continue
        seen.add(t)
        keep.append(i)
    return keep


# -------------------------------------------------------------------------------------------------- critic, student


class Critic:
    """Logistic regression on sentence embeddings; :meth:`score` gives P(label | text) for the given labels."""

    def __init__(self, embed: Any, C: float = 1.0, seed: int = 0):
        self.embed, self.C, self.seed = embed, C, seed

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> Critic:
        from sklearn.linear_model import LogisticRegression

        self.clf = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
        self.clf.fit(self.embed(list(texts)), list(labels))
        return self

    def proba(self, texts: Sequence[str]) -> Any:
        return self.clf.predict_proba(self.embed(list(texts)))

    def score(self, texts: Sequence[str], labels: Sequence[int]) -> list[float]:
        p = self.proba(texts)
        cols = list(self.clf.classes_)
        return [float(p[i, cols.index(int(y))]) for i, y in enumerate(labels)]


def tfidf_student(train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
                  test_labels: Sequence[int], seed: int = 0) -> float:
    """Test accuracy of TF-IDF (uni+bigrams) + logistic regression trained on the given corpus."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x = vec.fit_transform(list(train_texts))
    clf = LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x, list(train_labels))
    pred = clf.predict(vec.transform(list(test_texts)))
    return float(sum(int(p == y) for p, y in zip(pred, test_labels, strict=True)) / len(test_labels))


def teacher_few_shot_accuracy(gen: TextGenerator, shot_texts: Sequence[str], shot_labels: Sequence[int],
                              class_names: Sequence[str], test_texts: Sequence[str], test_labels: Sequence[int],
                              shots: int = 4, seed: int = 0) -> float:
    """The teacher as a classifier: ``shots`` labelled examples in the prompt, the assistant turn opened with
    "Answer:", the answer is the class name whose first token has the highest next-token log-probability."""
    from distill.llm.textgen import chatml

    rng = random.Random(seed)
    idx = rng.sample(range(len(shot_texts)), shots)
    demo = "\n".join(f"Sentence: {shot_texts[i]}\nAnswer: {class_names[shot_labels[i]]}" for i in idx)
    names = " or ".join(class_names)
    right = 0
    for t, y in zip(test_texts, test_labels, strict=True):
        msg = [{"role": "user", "content": f"Classify the sentiment of each sentence as {names}.\n{demo}\n"
                f"Sentence: {t}"}]
        lp = gen.label_logprobs(chatml(msg, "Answer:"), [f" {c}" for c in class_names])
        right += int(max(range(len(lp)), key=lp.__getitem__) == int(y))
    return right / len(test_texts)


# -------------------------------------------------------------------------------------------------------- stages


class GenerateOptions(Strict):
    teacher: str = Field(..., description="the GGUF chat model file")
    data: str = Field(..., description="labelled sentences (SST format or tsv/csv) to draw the shots from")
    pool: int = Field(1000, gt=0, description="the first `pool` shuffled sentences of `data` are the shot pool")
    class_names: list[str] = Field(default_factory=lambda: ["negative", "positive"], min_length=2)
    candidates: int = Field(200, gt=0)
    shots: int = Field(5, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    max_tokens: int = Field(32, gt=0)
    chunk: int = Field(10, gt=0, description="candidates per checkpoint")


def shot_pool(path: str, pool: int, seed: int) -> tuple[list[str], list[int]]:
    from distill.data.text import load_text_classification

    ex = load_text_classification(path)
    idx = list(range(len(ex)))
    random.Random(seed).shuffle(idx)
    idx = idx[:pool]
    return [ex.texts[i] for i in idx], [ex.labels[i] for i in idx]


@register_stage_kind
class SymbolicGenerate(StageKind):
    name = "symbolic_generate"
    summary = "symbolic KD: the teacher writes labelled sentences from few-shot prompts of real ones"
    Options = GenerateOptions
    inputs: dict[str, str] = {}

    def identity(self, ctx: StageContext, options: GenerateOptions) -> dict[str, str]:
        return {"teacher#file": file_identity(options.teacher, ctx.base_dir),
                "data#file": file_identity(options.data, ctx.base_dir)}

    def run(self, ctx: StageContext, options: GenerateOptions, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.llm.textgen import GGUFChat

        texts, labels = shot_pool(str(ctx.resolve(options.data)), options.pool, ctx.seed)
        state = ctx.load_state() or {"done": 0, "texts": [], "labels": []}
        with GGUFChat(ctx.resolve(options.teacher)) as gen:
            while state["done"] < options.candidates:
                stop = min(state["done"] + options.chunk, options.candidates)
                for t, c in generate_candidates(gen, texts, labels, options.class_names, state["done"], stop,
                                                shots=options.shots, seed=ctx.seed, max_tokens=options.max_tokens,
                                                temperature=options.temperature, top_p=options.top_p):
                    state["texts"].append(t)
                    state["labels"].append(c)
                state["done"] = stop
                ctx.save_state(state)
                ctx.log(f"{ctx.name}: {stop}/{options.candidates} candidates")
        cands = list(zip(state["texts"], state["labels"], strict=True))
        keep = deduplicate(cands, texts)
        table = {**text_columns([cands[i][0] for i in keep]),
                 "label": torch.tensor([cands[i][1] for i in keep], dtype=torch.int64),
                 "index": torch.tensor(keep, dtype=torch.int64)}
        return StageOutput({"candidates": table}, meta={"generated": len(cands), "kept": len(keep),
                                                        "class_names": options.class_names})


class FilterOptions(Strict):
    data: str = Field(..., description="labelled real sentences: the critic's training and calibration data")
    real: int = Field(1000, gt=1, description="sentences the critic is trained on (the shot pool's)")
    calibration: int = Field(500, gt=1, description="further held-out sentences for the recall threshold")
    target_recalls: list[float] = Field(default_factory=lambda: [0.8, 0.5], min_length=1)
    splits: int = Field(2, gt=0)


def critic_filter(embed: Any, cand_texts: Sequence[str], cand_labels: Sequence[int], real_texts: Sequence[str],
                  real_labels: Sequence[int], cal_texts: Sequence[str], cal_labels: Sequence[int],
                  target_recalls: Sequence[float], splits: int = 2, seed: int = 0) -> dict[str, Any]:
    """Fit the critic on the real sentences, calibrate a cutoff per target recall on correct vs flipped labels,
    score the candidates. Returns scores, and per target recall the cutoff, its estimated precision (correct
    labels among the calibration pairs it keeps) and the kept indices."""
    critic = Critic(embed, seed=seed).fit(real_texts, real_labels)
    k = len(set(real_labels))
    p = critic.proba(cal_texts)
    cols = list(critic.clf.classes_)
    cal_scores, cal_pos = [], []
    for i, y in enumerate(cal_labels):
        cal_scores.append(float(p[i, cols.index(int(y))]))
        cal_pos.append(True)
        cal_scores.append(float(p[i, cols.index((int(y) + 1) % k)]))  # a wrong label (binary: the flipped one)
        cal_pos.append(False)
    scores = critic.score(cand_texts, cand_labels)
    out: dict[str, Any] = {"scores": scores, "cutoffs": {}, "precision": {}, "kept": {}}
    for r in target_recalls:
        t = calibrated_threshold(cal_scores, cal_pos, r, splits=splits, seed=seed)
        out["cutoffs"][r] = t
        out["precision"][r] = calibrated_precision(cal_scores, cal_pos, t, splits=splits, seed=seed)
        out["kept"][r] = [i for i, s in enumerate(scores) if s >= t]
    return out


@register_stage_kind
class CriticFilter(StageKind):
    name = "critic_filter"
    summary = "symbolic KD: critic scores of generated sentences and the cutoffs at target recalls"
    Options = FilterOptions
    inputs = {"candidates": "a symbolic_generate stage"}

    def identity(self, ctx: StageContext, options: FilterOptions) -> dict[str, str]:
        return {"data#file": file_identity(options.data, ctx.base_dir)}

    def run(self, ctx: StageContext, options: FilterOptions, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.text.st_models import load_sentence_model

        cand = inputs["candidates"].table("candidates")
        texts, labels = shot_pool(str(ctx.resolve(options.data)), options.real + options.calibration, ctx.seed)
        model = load_sentence_model()

        def embed(xs: list[str]) -> Any:
            return model.encode(xs, batch_size=64, normalize_embeddings=True)

        r = options.real
        res = critic_filter(embed, texts_of(cand), cand["label"].tolist(), texts[:r], labels[:r], texts[r:],
                            labels[r:], options.target_recalls, options.splits, ctx.seed)
        table = {"index": cand["index"], "score": torch.tensor(res["scores"], dtype=torch.float64)}
        for rr in options.target_recalls:
            mask = torch.zeros(len(res["scores"]), dtype=torch.uint8)
            mask[res["kept"][rr]] = 1
            table[f"keep_r{round(rr * 100)}"] = mask
        return StageOutput({"scores": table}, meta={"cutoffs": {str(k): v for k, v in res["cutoffs"].items()},
                                                    "precision": {str(k): v for k, v in res["precision"].items()},
                                                    "kept": {str(k): len(v) for k, v in res["kept"].items()}})
