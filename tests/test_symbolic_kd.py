"""Symbolic KD (row 43): the recall-threshold cutoff, the monotone filter, seeded resumable generation with a stub
teacher, deduplication, the critic's scores, and texts stored in artefact tables."""

from __future__ import annotations

import random

import numpy as np
import pytest

from distill.llm.textgen import clean_sentence, text_columns, texts_of
from distill.pipelines.methods.symbolic_kd import (
    Critic,
    calibrated_precision,
    calibrated_threshold,
    critic_filter,
    deduplicate,
    few_shot_messages,
    generate_candidates,
    recall_threshold,
    teacher_few_shot_accuracy,
)


def test_recall_threshold_hand_computed():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    pos = [True, False, True, True, False, True, True, False, False, True]  # positives: .9 .7 .6 .4 .3 .05
    # 6 positives; recall 0.8 needs ceil(4.8) = 5 kept -> the 5th largest positive score, 0.3
    assert recall_threshold(scores, pos, 0.8) == 0.3
    assert recall_threshold(scores, pos, 0.5) == 0.6  # 3 positives
    assert recall_threshold(scores, pos, 1.0) == 0.05


def test_recall_threshold_is_the_largest_cutoff_reaching_the_recall():
    rng = np.random.default_rng(0)
    scores = rng.random(300).tolist()
    pos = (rng.random(300) < 0.4).tolist()
    n_pos = sum(pos)
    for r in (0.5, 0.8, 0.95):
        t = recall_threshold(scores, pos, r)
        rec = sum(1 for s, p in zip(scores, pos) if p and s >= t) / n_pos
        assert rec >= r
        higher = min(s for s in scores if s > t)  # the next cutoff up loses a positive
        assert sum(1 for s, p in zip(scores, pos) if p and s >= higher) / n_pos < r


def test_filter_is_monotone_in_target_recall():
    rng = np.random.default_rng(1)
    scores, pos = rng.random(200).tolist(), (rng.random(200) < 0.5).tolist()
    cand = rng.random(500)
    kept = {r: set(np.flatnonzero(cand >= calibrated_threshold(scores, pos, r, splits=2))) for r in (0.5, 0.8, 0.95)}
    assert kept[0.5] <= kept[0.8] <= kept[0.95]
    assert len(kept[0.5]) < len(kept[0.95])


def test_calibrated_threshold_is_the_mean_of_the_parts():
    scores = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3]
    pos = [True, False, True, True, True, False]
    assert calibrated_threshold(scores, pos, 0.5, splits=1) == recall_threshold(scores, pos, 0.5)
    idx = list(range(6))
    random.Random(3).shuffle(idx)
    parts = [idx[0::2], idx[1::2]]
    want = [recall_threshold([scores[i] for i in p], [pos[i] for i in p], 0.5) for p in parts]
    assert calibrated_threshold(scores, pos, 0.5, splits=2, seed=3) == pytest.approx(sum(want) / 2)
    with pytest.raises(ValueError, match="target_recall"):
        recall_threshold(scores, pos, 0.0)


def test_calibrated_precision_hand_computed_from_the_negatives():
    # calibration pairs (score, correct label?); by hand with one part, then per part as calibrated_threshold
    # splits them
    scores = [0.9, 0.8, 0.6, 0.4, 0.3, 0.7]
    pos = [True, False, True, True, False, False]
    # one part: kept at 0.5 = {0.9 +, 0.8 -, 0.6 +, 0.7 -} -> 2 / 4
    assert calibrated_precision(scores, pos, 0.5, splits=1) == pytest.approx(0.5)
    assert calibrated_precision(scores, pos, 0.85, splits=1) == pytest.approx(1.0)  # only 0.9 (+)
    assert calibrated_precision(scores, pos, 0.95, splits=1) == 1.0  # nothing kept: the end of the curve
    idx = list(range(6))
    random.Random(4).shuffle(idx)
    shares = []
    for p in (idx[0::2], idx[1::2]):
        kept = [pos[i] for i in p if scores[i] >= 0.5]
        if kept:
            shares.append(sum(kept) / len(kept))
    assert calibrated_precision(scores, pos, 0.5, splits=2, seed=4) == pytest.approx(sum(shares) / len(shares))
    # the negatives matter: flipping one negative's score above the cutoff lowers the precision, not the cutoff
    worse = [0.9, 0.8, 0.6, 0.4, 0.55, 0.7]
    assert calibrated_threshold(worse, pos, 0.5, splits=1) == calibrated_threshold(scores, pos, 0.5, splits=1)
    assert calibrated_precision(worse, pos, 0.5, splits=1) == pytest.approx(2 / 5)


class StubTeacher:
    """Answers with its seed and the label word it was asked for; logs every prompt."""

    def __init__(self):
        self.prompts = []

    def chat(self, messages, *, max_tokens, temperature, top_p, seed):
        text = messages[-1]["content"]
        self.prompts.append(text)
        label = "positive" if "new short positive" in text else "negative"
        return f"Here is one:\n\"A {label} sentence number {seed % 1000}.\""

    def label_logprobs(self, prompt, words):
        return [-1.0 if w in prompt.rsplit("Sentence:", 1)[-1] else -2.0 for w in words]


POOL = [f"good film {i}" for i in range(10)] + [f"bad film {i}" for i in range(10)]
POOL_Y = [1] * 10 + [0] * 10


def test_generation_is_seeded_resumable_and_shows_only_the_intended_label():
    t1, t2 = StubTeacher(), StubTeacher()
    whole = generate_candidates(t1, POOL, POOL_Y, ["negative", "positive"], 0, 8, shots=3, seed=5)
    parts = (generate_candidates(t2, POOL, POOL_Y, ["negative", "positive"], 0, 3, shots=3, seed=5)
             + generate_candidates(t2, POOL, POOL_Y, ["negative", "positive"], 3, 8, shots=3, seed=5))
    assert whole == parts and t1.prompts == t2.prompts
    assert [c for _, c in whole] == [0, 1] * 4
    assert whole[1][0] == f"a positive sentence number {(5 * 1_000_003 + 1) % 1000}."
    for i, p in enumerate(t1.prompts):
        shown = [line[2:] for line in p.splitlines() if line.startswith("- ")]
        assert len(shown) == 3 and all(s.startswith("good" if i % 2 else "bad") for s in shown)
    other = generate_candidates(StubTeacher(), POOL, POOL_Y, ["negative", "positive"], 0, 8, shots=3, seed=6)
    assert other != whole


def test_deduplicate_drops_empty_copies_and_repeats():
    cands = [("a fine film", 1), ("", 0), ("good film 3", 1), ("a fine film", 0), ("dull", 0), ("so dull", 0)]
    assert deduplicate(cands, POOL) == [0, 5]


def test_critic_scores_the_intended_label_and_filters():
    vocab = ["good", "bad", "fine", "dull"]

    def embed(xs):
        return np.array([[x.split().count(w) for w in vocab] + [1.0] for x in xs], dtype=float)

    real = ["good fine"] * 20 + ["bad dull"] * 20
    y = [1] * 20 + [0] * 20
    critic = Critic(embed).fit(real, y)
    s = critic.score(["good good", "good good", "bad"], [1, 0, 0])
    assert s[0] > 0.5 > s[1] and s[0] == pytest.approx(1 - s[1]) and s[2] > 0.5
    cands = ["good fine", "bad dull", "good", "bad"]
    out = critic_filter(embed, cands, [1, 1, 1, 0], real, y, real, y, [0.8, 0.5])
    assert 1 not in out["kept"][0.8]  # a negative sentence labelled positive is filtered out
    assert out["precision"][0.8] == pytest.approx(1.0)  # the critic separates correct from flipped labels here
    assert set(out["kept"][0.5]) <= set(out["kept"][0.8])


def test_teacher_few_shot_accuracy_reads_label_logprobs():
    acc = teacher_few_shot_accuracy(StubTeacher(), POOL, POOL_Y, ["negative", "positive"],
                                    ["a positive one", "a negative one", "a positive one"], [1, 0, 0], shots=2)
    assert acc == pytest.approx(2 / 3)


def test_texts_round_trip_through_tables_and_cleaning():
    texts = ["plain", "", "ünïcödé — ok", "x" * 50]
    assert texts_of(text_columns(texts)) == texts
    assert clean_sentence('Here is a new positive sentence:\n"Great Fun."') == "great fun."
    assert clean_sentence("Sure! Here's one: \"Dull.\"") == "dull."
    assert clean_sentence("\n\n") == ""
    assert "2 positive movie review sentences" in few_shot_messages(["a", "b"], "positive")[0]["content"]


def test_gguf_teacher_releases_its_model_at_the_end_of_a_with_block(shared):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'distill[served]')")
    from distill.llm.textgen import GGUFChat

    gguf = shared("models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
    with pytest.raises(KeyError), GGUFChat(gguf, n_ctx=256) as chat:
        inner = chat.llm
        assert chat.tokens("good film")
        raise KeyError("an error inside the block")
    assert chat._llm is None and inner._model.model is None  # llama.cpp freed the model at the block's end
    with pytest.raises(RuntimeError, match="closed"):
        chat.tokens("good film")
    chat.close()  # a second close does nothing
