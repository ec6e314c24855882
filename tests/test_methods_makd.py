"""MaKD: CE on the class logits plus BCE of aspect logits towards offline P(yes) answers."""

from __future__ import annotations

import math

import pytest
import torch

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.logits import cross_entropy
from distill.methods.makd import (
    AspectTargets,
    FirstLogits,
    MultiAspectKD,
    aspect_report,
    score_aspects,
    texts_fingerprint,
    yes_probability,
)

YAML_EXAMPLES = {"makd": "{name: makd, num_classes: 2, alpha: 4.0, ce_weight: 1.0}"}


def _inputs(z, a, y):
    return StepInputs(ModelOutput(z), ModelOutput(None, {"aspect_probs": a}), y)


def test_alpha_zero_is_ce_on_the_first_c_logits():
    z = torch.randn(5, 2 + 3)
    y = torch.tensor([0, 1, 1, 0, 1])
    terms = MultiAspectKD(num_classes=2, alpha=0.0)(_inputs(z, torch.rand(5, 3), y))
    assert terms["aspect_bce"].item() == 0.0
    assert terms["ce"].item() == pytest.approx(cross_entropy(z[:, :2], y).item(), abs=1e-6)


def test_bce_term_matches_hand_formula():
    z = torch.tensor([[0.3, -0.2, 1.0, -2.0], [0.0, 0.5, 0.0, 3.0]])
    a = torch.tensor([[0.9, 0.2], [0.5, 1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    manual = 0.0
    for i in range(2):
        for j in range(2):
            s, t = sig(float(z[i, 2 + j])), float(a[i, j])
            manual += -(t * math.log(s) + (1 - t) * math.log(1 - s))
    manual /= 4
    terms = MultiAspectKD(num_classes=2, alpha=4.0, ce_weight=0.0)(_inputs(z, a, torch.tensor([0, 1])))
    assert "ce" not in terms
    assert terms["aspect_bce"].item() == pytest.approx(4.0 * manual, abs=1e-6)


def test_predictions_use_only_class_logits():
    head = torch.nn.Linear(4, 2 + 3)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.0, 1.0, 50.0, 50.0, 50.0]))  # aspect outputs dominate the raw argmax
    x = torch.zeros(3, 4)
    model = MultiAspectKD(num_classes=2).inference_model(head)
    assert isinstance(model, FirstLogits)
    assert model(x).shape == (3, 2)
    assert model(x).argmax(-1).tolist() == [1, 1, 1]
    assert head(x).argmax(-1).tolist() != [1, 1, 1]


def test_yes_probability_on_mocked_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    assert yes_probability(logits, [0], [2]).item() == pytest.approx(1 / (1 + math.exp(-(2.0 - 0.5))), abs=1e-6)
    # two spellings per side: logsumexp of each
    both = yes_probability(logits, [0, 1], [2, 3]).item()
    ly, ln = math.log(math.exp(2) + math.exp(-1)), math.log(math.exp(0.5) + 1)
    assert both == pytest.approx(1 / (1 + math.exp(-(ly - ln))), abs=1e-6)


def test_gradients_reach_student_and_setup_checks_width():
    z = torch.randn(4, 5, requires_grad=True)
    a = torch.rand(4, 3)
    method = MultiAspectKD(num_classes=2)
    loss = sum(method(_inputs(z, a, torch.tensor([0, 1, 0, 1]))).values())
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    method.setup(ModelOutput(z.detach()), ModelOutput(None, {"aspect_probs": a.detach()}), RunInfo())
    with pytest.raises(ValueError, match="num_classes: 5"):
        MultiAspectKD(num_classes=2).setup(ModelOutput(torch.zeros(4, 4)),
                                           ModelOutput(None, {"aspect_probs": torch.rand(4, 3)}), RunInfo())


def test_aspect_targets_source_round_trip_and_refusals(tmp_path):
    probs = torch.rand(6, 2)
    fp = texts_fingerprint(["a", "b", "c", "d", "e", "f"])
    AspectTargets(probs, ["q1?", "q2?"], fp).save(tmp_path / "a.safetensors")
    src = AspectTargets.load(tmp_path / "a.safetensors", expect_fingerprint=fp)
    out = src(Batch(inputs=None, indices=torch.tensor([4, 1])))
    assert torch.equal(out.features["aspect_probs"], probs[[4, 1]])
    assert src.questions == ["q1?", "q2?"]
    with pytest.raises(ValueError, match="other texts"):
        AspectTargets.load(tmp_path / "a.safetensors", expect_fingerprint=texts_fingerprint(["x"]))
    with pytest.raises(ValueError, match="no indices"):
        src(Batch(inputs=None))
    with pytest.raises(ValueError, match="probabilities"):
        AspectTargets(torch.tensor([[1.5]]))


def test_aspect_report_flags_uninformative_questions():
    labels = torch.tensor([0, 1] * 50)
    informative = labels.float() * 0.8 + 0.1
    flat = torch.full((100,), 0.5)
    rep = aspect_report(torch.stack([informative, flat], 1), labels, ["good", "flat"])
    assert rep["questions"][0]["informative"] and not rep["questions"][1]["informative"]
    assert rep["questions"][0]["label_correlation"] == pytest.approx(1.0, abs=1e-9)
    assert rep["informative"]
    assert not aspect_report(flat[:, None], labels)["informative"]


def test_score_aspects_reads_the_next_token_logits_with_left_padding():
    transformers = pytest.importorskip("transformers")

    class Tok:
        """A word-level stand-in tokenizer: enough of the transformers tokenizer API for score_aspects."""

        def __init__(self):
            self.vocab = {"<pad>": 0, "Yes": 1, "No": 2}
            self.padding_side = "right"
            self.pad_token, self.eos_token = "<pad>", "<pad>"

        def _id(self, w):
            return self.vocab.setdefault(w, len(self.vocab))

        def encode(self, text, add_special_tokens=False):
            return [self._id(w) for w in text.split()]

        def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=True):
            return "user " + msgs[0]["content"] + " assistant"

        def __call__(self, texts, return_tensors="pt", padding=True, truncation=True, max_length=64,
                     add_special_tokens=False):
            ids = [self.encode(t) for t in texts]
            n = max(map(len, ids))
            rows = [[0] * (n - len(r)) + r for r in ids]
            mask = [[0] * (n - len(r)) + [1] * len(r) for r in ids]
            return transformers.BatchEncoding({"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(mask)})

    tok = Tok()
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    texts, questions = ["a good film", "bad"], ["Is it positive?", "Is acting mentioned here at all?"]
    probs = score_aspects(model, tok, texts, questions, batch_size=3)
    assert probs.shape == (2, 2) and tok.padding_side == "right"
    # the sentence's prompt start run once, its key/value cache reused for every question: same numbers
    shared = score_aspects(model, tok, texts, questions, reuse_prefix=True)
    assert torch.allclose(shared, probs, atol=1e-5)
    # a text whose prompts exceed max_length falls back to the full prompts (truncated like them)
    assert torch.allclose(score_aspects(model, tok, texts, questions, max_length=8, reuse_prefix=True),
                          score_aspects(model, tok, texts, questions, max_length=8), atol=1e-5)
    # each entry equals a single unpadded forward of that prompt
    for i, t in enumerate(texts):
        for j, q in enumerate(questions):
            prompt = tok.apply_chat_template([{"role": "user", "content": f"Sentence: \"{t}\"\n{q} Answer Yes or No."}])
            ids = torch.tensor([tok.encode(prompt)])
            last = model(input_ids=ids).logits[0, -1]
            assert probs[i, j].item() == pytest.approx(yes_probability(last, [1], [2]).item(), abs=1e-4)
