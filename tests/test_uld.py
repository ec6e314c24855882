"""ULD (sorted-probability L1) against hand-computed values and gradients, across vocabulary sizes, with top-k
teachers and masks; the cross-tokenizer alignment, teacher source and store; the config's refusals."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import ConfigError, parse_config
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.topk import TopKLogits
from distill.llm.char_tokenizer import char_tokenizer
from distill.llm.models import small_llama
from distill.methods.llm.uld import ULD, uld_distance
from distill.tasks.causal_lm.cross_tokenizer import CrossTokenizerTeacher, align_positions, row_hash
from distill.tasks.causal_lm.vocab_check import CROSS_TOKENIZER, check_shared_vocab


def logits_of(*probs: float) -> torch.Tensor:
    return torch.tensor(probs).log()


# -- the loss ---------------------------------------------------------------------------------------------------
def test_value_is_the_l1_of_sorted_probabilities_with_zero_padding():
    # q = (0.2, 0.5, 0.3) sorted (0.5, 0.3, 0.2); p = (0.1, 0.6, 0.2, 0.1) sorted (0.6, 0.2, 0.1, 0.1):
    # |0.5-0.6| + |0.3-0.2| + |0.2-0.1| + |0-0.1| = 0.4 (the student's vocabulary is padded with a zero)
    d = uld_distance(logits_of(0.2, 0.5, 0.3), logits_of(0.1, 0.6, 0.2, 0.1))
    assert d.item() == pytest.approx(0.4, abs=1e-6)
    # student larger than teacher: q (0.4, 0.3, 0.2, 0.1), p (0.7, 0.3) padded: 0.3 + 0 + 0.2 + 0.1 = 0.6
    d = uld_distance(logits_of(0.1, 0.4, 0.2, 0.3), logits_of(0.3, 0.7))
    assert d.item() == pytest.approx(0.6, abs=1e-6)
    # identical distributions over permuted ids of different vocabularies cost nothing (no identity is compared)
    d = uld_distance(logits_of(0.2, 0.5, 0.3), torch.tensor([math.log(0.3), -1e9, math.log(0.5), math.log(0.2)]))
    assert d.item() == pytest.approx(0.0, abs=1e-6)


def test_temperatures_soften_each_side_before_sorting():
    zs, zt = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 3.0])
    q = torch.softmax(zs / 2.0, -1).sort(descending=True).values
    p = torch.softmax(zt / 0.5, -1).sort(descending=True).values
    want = (q[:2] - p).abs().sum() + q[2]
    assert uld_distance(zs, zt, 2.0, 0.5).item() == pytest.approx(want.item(), abs=1e-6)


def test_topk_teacher_is_exact_when_k_covers_the_student_vocabulary():
    # p = (0.5, 0.2, 0.15, 0.1, 0.05), k = 3 >= V_S = 3: the unknown tail shape does not matter
    p = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])
    zs = logits_of(0.4, 0.2, 0.4)
    dense = uld_distance(zs, p.log())
    top = TopKLogits.from_logits(p.log(), 3)
    assert dense.item() == pytest.approx(0.1 + 0.2 + 0.05 + 0.15, abs=1e-6)  # 0.5 by hand
    assert uld_distance(zs, top).item() == pytest.approx(dense.item(), abs=1e-6)
    # k < V_S: the ranks past k hold the tail spread evenly (0.05 + 0.1 + 0.15 over 3 tokens = 0.1 each)
    top2 = TopKLogits.from_logits(p.log(), 2)
    want = abs(0.4 - 0.5) + abs(0.4 - 0.2) + abs(0.2 - 0.1) + 0.2  # + the two ranks past V_S
    assert uld_distance(zs, top2).item() == pytest.approx(want, abs=1e-6)


def test_gradient_reaches_the_student_only_and_matches_the_hand_derivation():
    # L = sum_r |q_(r) - p_(r)|; signs s = sign(q - p) by rank: q (0.5, 0.3, 0.2) vs p (0.6, 0.2, 0.1) -> (-1, +1, +1)
    # dL/dz_j = q_j (s_j - sum_i q_i s_i) = q_j s_j (sum q s = -0.5 + 0.3 + 0.2 = 0): (-0.5, 0.3, 0.2) in the
    # student's own token order (0.5 is token 1 here)
    zs = logits_of(0.3, 0.5, 0.2).requires_grad_()
    zt = logits_of(0.1, 0.6, 0.2, 0.1).requires_grad_()
    uld_distance(zs, zt).backward()
    assert zt.grad is None
    assert torch.allclose(zs.grad, torch.tensor([0.3, -0.5, 0.2]), atol=1e-6)


def step(zs, teacher, labels=None, aligned=None):
    feats = {} if aligned is None else {"aligned": aligned}
    t_out = ModelOutput(None, feats, teacher) if isinstance(teacher, TopKLogits) else ModelOutput(teacher, feats)
    return StepInputs(student=ModelOutput(zs), teacher=t_out, labels=labels)


def test_method_averages_over_aligned_loss_bearing_positions_only():
    torch.manual_seed(0)
    zs = torch.randn(2, 4, 5, requires_grad=True)
    zt = torch.randn(2, 4, 9)
    labels = torch.tensor([[1, 2, 3, -100], [1, 2, 3, 4]])  # row 0's last target is padding
    aligned = torch.tensor([[True, False, True, True], [True, True, False, False]])
    loss = ULD()(step(zs, zt, labels, aligned))["loss"]
    d = uld_distance(zs[:, :-1], zt[:, :-1])  # position t (predicting t + 1)
    used = [d[0, 0], d[1, 0], d[1, 1]]  # (0, 2) aligned but its target is -100; (0, 1) and (1, 2) unaligned
    assert loss.item() == pytest.approx(torch.stack(used).mean().item(), abs=1e-6)
    loss.backward()
    assert zs.grad[0, 1].abs().sum() == 0 and zs.grad[0, 2].abs().sum() == 0 and zs.grad[1, 2].abs().sum() == 0
    assert zs.grad[0, 0].abs().sum() > 0
    # every position aligned without the feature (a same-tokenizer teacher), and reductions
    full = ULD(reduction="none")(step(zs.detach(), zt, labels))["loss"]
    assert full.shape == (2, 3) and full[0, 2] == 0 and full[0, 1] > 0
    assert ULD(reduction="sum")(step(zs.detach(), zt, labels))["loss"].item() == pytest.approx(full.sum().item())


def test_method_reads_a_topk_teacher_at_the_student_positions_and_refuses_other_lengths():
    torch.manual_seed(1)
    zs, zt = torch.randn(1, 3, 4), torch.randn(1, 3, 50)
    top = TopKLogits.from_logits(zt, 8)
    got = ULD()(step(zs, top))["loss"]
    assert got.item() == pytest.approx(uld_distance(zs[:, :-1], zt[:, :-1]).mean().item(), abs=1e-5)
    with pytest.raises(ValueError, match="cover 2 positions and the student's 3"):
        ULD()(step(zs, zt[:, :2]))
    with pytest.raises(ValueError, match="student_temperature must be > 0"):
        ULD(student_temperature=0)


# -- alignment and the teacher source ---------------------------------------------------------------------------
def test_token_end_alignment_pairs_positions_that_read_the_same_prefix():
    # "First Citizen" as 13 characters and as two teacher tokens ending at 5 and 13
    assert align_positions(list(range(1, 14)), [5, 13]) == [(4, 0), (12, 1)]
    # a character split over two byte tokens (both ending at 3): the later one, after which it is complete
    assert align_positions([1, 2, 3, 4], [1, 3, 3, 4]) == [(0, 0), (2, 2), (3, 3)]
    # a coarser student: only shared ends pair
    assert align_positions([2, 5, 7], [1, 2, 4, 7]) == [(0, 1), (2, 3)]
    assert align_positions([1, 2, 3], [2, 3], "index") == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="alignment must be one of"):
        align_positions([1], [1], "nearest")


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "the", "king", "is", "dead", "long", "live"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def pair():
    text = "the king is dead long live the king"
    student_tok = char_tokenizer(set(text))
    teacher_tok = word_tokenizer()
    teacher = small_llama(len(teacher_tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                          max_positions=64, eos_token_id=1, pad_token_id=0, seed=3)
    return text, student_tok, teacher_tok, teacher


def test_teacher_source_places_each_word_distribution_at_its_last_character(pair):
    text, s_tok, t_tok, teacher = pair
    ids = torch.tensor([s_tok(text, add_special_tokens=False)["input_ids"]])
    assert s_tok.decode(ids[0].tolist()) == text
    src = CrossTokenizerTeacher(teacher, t_tok, s_tok, topk=4)
    idx, lp, aligned, v = src.compute(ids, torch.ones_like(ids))
    assert v == len(t_tok) and idx.shape == (1, len(text), 4)
    word_ends = [i for i, c in enumerate(text) if c != " " and (i + 1 == len(text) or text[i + 1] == " ")]
    assert aligned[0].nonzero().flatten().tolist() == word_ends
    t_ids = torch.tensor([t_tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want = TopKLogits.from_logits(teacher(input_ids=t_ids).logits, 4)
    for j, i in enumerate(word_ends):
        assert torch.equal(idx[0, i], want.indices[0, j])
        assert torch.allclose(lp[0, i], want.logprobs[0, j], atol=1e-5)
    assert lp[0, ~aligned[0]].abs().sum() == 0


def test_teacher_store_serves_the_computed_outputs_and_refuses_other_rows(pair, tmp_path):
    from distill.cache.store import CacheError
    from distill.core.batch import Batch
    from distill.tasks.causal_lm.task import LMData

    text, s_tok, t_tok, teacher = pair
    row = s_tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([row, row[::-1]])
    data = LMData(ids, torch.ones_like(ids), ids.clone())
    src = CrossTokenizerTeacher(teacher, t_tok, s_tok, topk=4, batch_size=1)
    src.use_store(tmp_path / "store", data)
    batch = Batch({"input_ids": ids[[1, 0]], "attention_mask": torch.ones(2, len(row), dtype=torch.long)},
                  ids[[1, 0]], torch.tensor([1, 0]))
    out = src(batch)
    idx, lp, aligned, _ = src.compute(ids[[1, 0]], torch.ones(2, len(row), dtype=torch.long))
    assert torch.equal(out.features["aligned"], aligned) and torch.equal(out.topk.indices, idx)
    assert torch.allclose(out.topk.logprobs, lp, atol=2e-3)  # stored as float16
    wrong = Batch(batch.inputs, batch.labels, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differs from the row"):
        src(wrong)
    other = CrossTokenizerTeacher(teacher, t_tok, s_tok, topk=2)  # another k: a stale store is refused
    with pytest.raises(CacheError, match="stale"):
        other.use_store(tmp_path / "store", data)
    assert row_hash(ids[0], torch.ones(len(row))) != row_hash(ids[1], torch.ones(len(row)))


# -- configuration --------------------------------------------------------------------------------------------
def raw_cfg(methods, **data):
    return {"task": "causal_lm", "output_dir": "run",
            "data": {"tokenizer": "chars", "text": "input.txt", "cross_tokenizer": {"alignment": "token_end"}, **data},
            "student": {"arch": "llama"}, "teacher": {"path": "teacher.gguf"}, "methods": methods,
            "train": {"epochs": 1}}


def test_config_allows_uld_across_tokenizers_and_refuses_the_shared_vocabulary_divergences():
    cfg = parse_config(raw_cfg([{"name": "lm_ce"}, {"name": "uld", "weight": 1.5}]))
    assert cfg.data.cross_tokenizer.topk == 128 and cfg.methods[1].weight == 1.5
    for name in ("fkl", "rkl", "gjsd", "tvd", "taid"):
        with pytest.raises(ConfigError, match=rf"^methods\[1\]: '{name}' compares") as e:
            parse_config(raw_cfg([{"name": "lm_ce"}, {"name": name}]))
        assert CROSS_TOKENIZER in str(e.value)
    bad = raw_cfg([{"name": "uld"}])
    bad["teacher"]["cache"] = {"path": "c", "topk": 64}
    with pytest.raises(ConfigError, match=r"^teacher\.cache: not supported with data\.cross_tokenizer"):
        parse_config(bad)
    with pytest.raises(ConfigError, match=r"data\.cross_tokenizer\.alignment"):
        parse_config(raw_cfg([{"name": "uld"}], cross_tokenizer={"alignment": "nearest"}))
    no_teacher = raw_cfg([{"name": "lm_ce"}])
    del no_teacher["teacher"]
    with pytest.raises(ConfigError, match=r"^data\.cross_tokenizer: describes the teacher's tokenizer"):
        parse_config(no_teacher)


def test_without_cross_tokenizer_a_teacher_of_another_vocabulary_is_still_refused():
    a, b = char_tokenizer("abc "), char_tokenizer("abcd ")
    model = small_llama(len(b), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=16,
                        eos_token_id=0, pad_token_id=0, seed=0)
    with pytest.raises(ConfigError, match="distilling across tokenizers is a separate method"):
        check_shared_vocab(model, a, "teacher", b)


def test_a_char_student_trains_from_a_word_level_teacher_live_and_from_the_store(tmp_path, pair):
    from distill.experiment import build_experiment

    text, _, t_tok, teacher = pair
    (tmp_path / "input.txt").write_text(" ".join([text] * 12))
    t_tok.save_pretrained(tmp_path / "teacher")
    teacher.save_pretrained(tmp_path / "teacher")
    for mode, cache in (("live", None), ("store", str(tmp_path / "store"))):
        raw = {"task": "causal_lm", "output_dir": str(tmp_path / mode), "seed": 0,
               "data": {"tokenizer": "chars", "text": "input.txt", "block_size": 32, "val_fraction": 0.2,
                        "agreement": False, "cross_tokenizer": {"topk": 4, "cache": cache, "batch_size": 4}},
               "student": {"arch": "llama", "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                        "intermediate_size": 32, "max_positions": 32}},
               "teacher": {"path": "teacher"},
               "methods": [{"name": "lm_ce"}, {"name": "uld", "weight": 1.5}],
               "train": {"epochs": 1, "max_steps": 2, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3,
                         "progress": False, "cpu": True}}
        exp = build_experiment(parse_config(raw, base_dir=str(tmp_path)))
        assert len(exp.task.new_metrics().compute()) and exp.task.vocab_size == len(set(text)) + 1
        batch = exp.task.fetch(exp.train_data, torch.arange(4))
        out = exp.teacher(batch, exp.task, [])
        assert out.topk.num_classes == len(t_tok) and out.features["aligned"].any()
        summary = exp.fit(resume=False)
        assert math.isfinite(summary["final"]["nll"])
    assert (tmp_path / "store" / "manifest.json").exists()
