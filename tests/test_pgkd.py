"""PGKD (row 40): the per-class report against hand-computed values, the error / hard-negative selectors, early
stopping returning the best-validation student, no test sentence in any prompt, determinism and resume with a stub
teacher."""

from __future__ import annotations

import numpy as np
import pytest

from distill.pipelines.methods.pgkd import (
    best_student_data,
    class_report,
    hard_negatives,
    macro_f1,
    misclassified,
    pgkd_loop,
    pgkd_messages,
)


def test_class_report_hand_computed():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    rep = class_report(y_true, y_pred, 3)
    # class 0: tp 2, fp 0, fn 1; class 1: tp 1, fp 1, fn 1; class 2: tp 1, fp 1, fn 0
    assert rep[0] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3.0})
    assert rep[1] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2.0})
    assert rep[2] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1.0})
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert class_report([0, 0], [0, 0], 2)[1] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}


def test_selectors():
    y_true = [0, 1, 1, 2, 0, 1]
    proba = np.array([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.2, 0.5, 0.3],
                      [0.55, 0.4, 0.05]])
    pred = proba.argmax(1).tolist()  # [0, 0, 1, 0, 1, 0]
    assert misclassified(y_true, pred, 1) == [1, 5]
    hard = hard_negatives(y_true, proba, 0)
    assert hard == [3, 1, 5]  # predicted 0, truly not 0, by P(0) descending: .9, .7, .55
    assert all(pred[i] == 0 and y_true[i] != 0 for i in hard)
    assert hard_negatives(y_true, proba, 2) == []


class Student:
    """Nearest class by a keyword count: ``w_c`` in the text votes for class c; generated texts teach it words."""

    def __init__(self, texts, labels, k=3):
        self.k = k
        self.words = {}
        for t, y in zip(texts, labels):
            for w in t.split():
                self.words.setdefault(w, np.zeros(k))[y] += 1

    def predict_proba(self, texts):
        out = np.full((len(texts), self.k), 0.1)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i] += self.words.get(w, 0)
        return out / out.sum(1, keepdims=True)


class StubTeacher:
    def __init__(self, scores=None):
        self.prompts = []

    def chat(self, messages, *, max_tokens, temperature, top_p, seed):
        text = messages[-1]["content"]
        self.prompts.append(text)
        label = text.rsplit("clearly '", 1)[1].split("'")[0]
        return f"Here you go:\n\"{label} w{label[-1]} example {seed % 97}\""


TRAIN = (["a w0", "b w1"], [0, 1])
VAL = (["x w0", "y w1", "z w2", "q w2"], [0, 1, 2, 2])
TEST = ["secret test sentence w2"]


def fit(texts, labels):
    return Student(texts, labels)


def run(**kw):
    t = StubTeacher()
    st = pgkd_loop(t, fit, TRAIN, VAL, ["c0", "c1", "c2"], task="toy", max_steps=4, patience=2, per_class=2,
                   show=2, seed=1, **kw)
    return t, st


def test_loop_is_deterministic_and_keeps_the_test_set_out_of_prompts():
    t1, s1 = run()
    t2, s2 = run()
    assert s1 == s2 and t1.prompts == t2.prompts
    assert s1["texts"] and all(txt.startswith(f"c{y} ") for txt, y in zip(s1["texts"], s1["labels"]))
    for p in t1.prompts:
        assert all(x not in p for x in TEST)
    # the first step's prompt for class 2 shows its wrong validation samples with the wrong label
    first_c2 = s1["prompts"][2]  # one prompt per class and step (sampled per_class times)
    assert t1.prompts[4] == t1.prompts[5] == first_c2
    assert "gets wrong" in first_c2 and "z w2 (it said:" in first_c2 and "precision" in first_c2


def test_early_stopping_returns_the_best_validation_student():
    _, st = run()
    f1s = [h["val_macro_f1"] for h in st["history"]]
    assert st["best"] == max(f1s) and st["history"][st["best_step"]]["val_macro_f1"] == max(f1s)
    texts, labels = best_student_data(st, TRAIN)
    assert len(texts) == 2 + sum(1 for s in st["steps"] if s <= st["best_step"])
    # the class-2 examples teach the student w2: validation improves at step 1, then it cannot improve -> stops
    assert st["best_step"] == 1 and st["stopped"] and st["step"] == 1 + 2


def test_resume_from_a_saved_state_gives_the_same_result():
    saved = []
    _, whole = run(save=lambda s: saved.append({k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}))
    t = StubTeacher()
    resumed = pgkd_loop(t, fit, TRAIN, VAL, ["c0", "c1", "c2"], task="toy", max_steps=4, patience=2, per_class=2,
                        show=2, seed=1, state={k: (list(v) if isinstance(v, list) else v) for k, v in saved[0].items()})
    assert resumed == whole


def test_prompt_contains_report_and_hard_negatives():
    rep = class_report([0, 1], [1, 1], 2)
    msg = pgkd_messages("toy", ["neg", "pos"], rep, 1, ["good"], [], [("bad one", "neg")])[0]["content"]
    assert "- pos: precision 0.50, recall 1.00, F1 0.67" in msg
    assert "wrongly calls 'pos':\n- bad one (truly: neg)" in msg and "gets wrong" not in msg
