"""Rationale KD (row 20): the multi-task loss against hand-computed values, gradients (alpha = 1 gives the
rationale tokens none), prefixes and masks, subset selection, n = all reproducing the full run, the teacher corpus
with a stub teacher."""

from __future__ import annotations

import math

import pytest
import torch

from distill.llm.models import small_llama
from distill.pipelines.methods.rationale_kd import (
    IGNORE,
    CompactVocab,
    encode_pairs,
    predict_labels,
    rationale_loss,
    select_subset,
    teacher_rationale,
    token_mean_ce,
    train_rationale_student,
)

WORDS: dict[str, int] = {}


def char_tok(text):
    """A word-level stand-in for the teacher's tokenizer (ids by first appearance)."""
    return [WORDS.setdefault(w, len(WORDS) + 100) for w in text.split()]


def test_rationale_loss_hand_computed():
    # vocab 2, one sequence each; logits at position 0 predict the token at position 1
    pred_logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])          # uniform: CE = log 2
    pred_labels = torch.tensor([[IGNORE, 1]])
    expl_logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, math.log(3.0)], [0.0, 0.0]]])
    expl_labels = torch.tensor([[IGNORE, 0, 1]])                      # p(0)=3/4 at t0, p(1)=3/4 at t1
    ce_pred, ce_expl = math.log(2.0), -math.log(0.75)
    out = rationale_loss(pred_logits, pred_labels, expl_logits, expl_labels, alpha=0.3)
    assert out["loss"].item() == pytest.approx(0.3 * ce_pred + 0.7 * ce_expl, rel=1e-6)
    assert out["expl"].item() == pytest.approx(ce_expl, rel=1e-6)
    # token mean, not a sequence mean: two rows with 1 and 3 target tokens weigh each token equally
    logits = torch.zeros(2, 4, 2)
    labels = torch.tensor([[IGNORE, 1, IGNORE, IGNORE], [IGNORE, 0, 1, 0]])
    logits[1, 0, 0] = math.log(3.0)  # the row-1 token at t1 gets p = 3/4
    want = (3 * math.log(2.0) - math.log(0.75)) / 4
    assert token_mean_ce(logits, labels).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        rationale_loss(pred_logits, pred_labels, expl_logits, expl_labels, alpha=1.5)
    with pytest.raises(ValueError, match="explain"):
        rationale_loss(pred_logits, pred_labels, None, None, alpha=0.5)


def tiny(vocab, seed=0, hidden=16):
    return small_llama(vocab, hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=2 * hidden,
                       max_positions=128, seed=seed)


def data():
    texts = ["good film", "bad film", "fine fun", "dull mess"]
    labels = ["positive", "negative", "positive", "negative"]
    rats = ["good is praise", "bad is a complaint", "fun is praise", "dull is a complaint"]
    vocab = CompactVocab([char_tok(t) for t in ["predict: explain: \nanswer:\nreasoning: ", *texts, *labels, *rats]])
    return texts, labels, rats, vocab


def test_prefixes_give_distinct_inputs_and_mask_prompt_and_padding():
    texts, labels, rats, vocab = data()
    pred = encode_pairs(char_tok, vocab, texts, labels, "predict")
    expl = encode_pairs(char_tok, vocab, texts, rats, "explain")
    assert pred["input_ids"][0, 0] != expl["input_ids"][0, 0]
    for b in (pred, expl):
        for i in range(len(texts)):
            p, n = int(b["prompt_len"][i]), int(b["attention_mask"][i].sum())
            assert (b["labels"][i, :p] == IGNORE).all() and (b["labels"][i, n:] == IGNORE).all()
            assert (b["labels"][i, p:n] == b["input_ids"][i, p:n]).all()
            assert int(b["labels"][i, n - 1]) == vocab.EOS
    # the predict target is " positive"/" negative" + eos
    p = int(pred["prompt_len"][0])
    assert pred["labels"][0, p:p + 1].tolist() == vocab(char_tok(" positive"))


def test_alpha_one_is_label_ce_and_rationale_tokens_get_no_gradient():
    texts, labels, rats, vocab = data()
    pred = encode_pairs(char_tok, vocab, texts, labels, "predict")
    expl = encode_pairs(char_tok, vocab, texts, rats, "explain")
    model = tiny(len(vocab))
    emb = model.get_input_embeddings()
    out = rationale_loss(model(input_ids=pred["input_ids"], attention_mask=pred["attention_mask"]).logits,
                         pred["labels"], None, None, alpha=1.0)
    ref = token_mean_ce(model(input_ids=pred["input_ids"], attention_mask=pred["attention_mask"]).logits,
                        pred["labels"])
    assert out["loss"].item() == pytest.approx(ref.item())
    # with the explain rows in the graph at alpha = 1 their tokens still get zero gradient
    el = model(input_ids=expl["input_ids"], attention_mask=expl["attention_mask"]).logits
    el.retain_grad()
    pl = model(input_ids=pred["input_ids"], attention_mask=pred["attention_mask"]).logits
    total = 1.0 * token_mean_ce(pl, pred["labels"]) + 0.0 * token_mean_ce(el, expl["labels"])
    total.backward()
    assert el.grad.abs().max().item() == 0.0
    g1 = emb.weight.grad.clone()
    # alpha < 1: the explain rows change the gradient, which reaches every layer
    model.zero_grad()
    res = rationale_loss(model(input_ids=pred["input_ids"], attention_mask=pred["attention_mask"]).logits,
                         pred["labels"], model(input_ids=expl["input_ids"], attention_mask=expl["attention_mask"]
                                               ).logits, expl["labels"], alpha=0.5)
    res["loss"].backward()
    assert not torch.allclose(emb.weight.grad, 0.5 * g1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "layers" in n)


def test_select_subset_rules():
    scores = [0.5, 3.0, -1.0, 2.0, 2.0, 0.1]
    assert select_subset(scores, 3, "margin") == [1, 3, 4]
    assert select_subset(scores, 2, "low_margin") == [2, 5]
    r = select_subset(scores, 4, "random", seed=1)
    assert r == sorted(r) and len(set(r)) == 4 and r == select_subset(scores, 4, "random", seed=1)
    assert select_subset(scores, 6, "random", seed=9) == list(range(6))
    with pytest.raises(ValueError, match="n=7"):
        select_subset(scores, 7, "random")


def test_full_random_subset_reproduces_the_full_run_and_training_learns():
    texts, labels, rats, vocab = data()
    pred = encode_pairs(char_tok, vocab, texts, labels, "predict")
    expl = encode_pairs(char_tok, vocab, texts, rats, "explain")
    runs = []
    for subset in (list(range(4)), select_subset([0.0] * 4, 4, "random", seed=3)):
        m = tiny(len(vocab), seed=1)
        train_rationale_student(m, pred, expl, subset, alpha=0.5, steps=3, batch_size=4, lr=1e-2, seed=2)
        runs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(runs[0], runs[1])
    m = tiny(len(vocab), seed=1, hidden=32)
    class_ids = [vocab(char_tok(" negative"))[0], vocab(char_tok(" positive"))[0]]
    assert class_ids[0] != class_ids[1]
    train_rationale_student(m, pred, expl, range(4), alpha=1.0, steps=100, batch_size=4, lr=1e-2, seed=0)
    assert predict_labels(m, pred, class_ids).tolist() == [1, 0, 1, 0]


class StubTeacher:
    def complete(self, prompt, *, max_tokens, temperature, top_p, seed, stop=None, allow_eos=True):
        assert prompt.endswith("<|im_start|>assistant\nReasoning:") and temperature == 0.0 and not allow_eos
        return " The words  are glowing.\n"

    def label_logprobs(self, prompt, words):
        assert prompt.endswith("Reasoning: The words are glowing.\nAnswer:") and words == [" negative", " positive"]
        return [-2.5, -0.5]


def test_teacher_rationale_reads_label_and_margin():
    r, y, m = teacher_rationale(StubTeacher(), "a glowing film .", ["negative", "positive"])
    assert (r, y, m) == ("the words are glowing.", 1, pytest.approx(2.0))
