"""``task: causal_lm``: the teacher must share data.tokenizer's vocabulary. A teacher whose head is only padded past
the tokenizer (same tokens) is served sliced, with a note; a smaller vocabulary, a different tokenizer, or a wider
head whose tokens cannot be compared is refused in one line when the teacher is built."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from test_methods_llm_data import WORDS, corpus, make_tokenizer, tiny_model  # noqa: E402

from distill.config import ConfigError, parse_config  # noqa: E402
from distill.experiment import build_parts  # noqa: E402


def lm_config(tmp_path, teacher: str = "teacher") -> object:
    raw = {"task": "causal_lm", "data": {"tokenizer": "tok", "text": "input.txt", "block_size": 16},
           "student": {"arch": "llama", "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                    "intermediate_size": 32, "max_positions": 64}},
           "teacher": {"path": teacher}, "methods": [{"name": "fkl"}]}
    return parse_config(raw, base_dir=tmp_path)


@pytest.fixture()
def folder(tmp_path):
    make_tokenizer().save_pretrained(tmp_path / "tok")
    corpus(tmp_path)
    return tmp_path


def test_a_padded_teacher_with_the_same_tokens_is_sliced_with_a_note(folder, capsys):
    tiny_model(24, seed=1).save_pretrained(folder / "teacher")  # 20 tokens, embedding padded to 24 rows
    make_tokenizer(name="teacher-tok").save_pretrained(folder / "teacher")
    parts = build_parts(lm_config(folder), need_teacher=True)
    err = capsys.readouterr().err
    assert "note: teacher: logits 24 wide (embedding padded past the tokenizer); sliced to data.tokenizer's 20 " \
           "tokens" in err
    task = parts.loaded.task
    batch = task.fetch(parts.loaded.train, torch.arange(2))
    out = parts.teacher(batch, task)
    assert out.logits.shape[-1] == len(WORDS) == 20
    full = parts.live_teacher.model(input_ids=batch.inputs["input_ids"]).logits
    assert torch.allclose(out.logits, full[..., :20])


def test_a_teacher_with_a_smaller_vocabulary_is_refused(folder):
    tiny_model(16, seed=1).save_pretrained(folder / "teacher")  # ids 16..19 would index past its embedding
    with pytest.raises(ConfigError, match=r"^teacher\.path: the teacher's input embedding has 16 rows, but "
                                          r"data\.tokenizer produces 20 ids \(a smaller vocabulary .*distilling "
                                          r"across tokenizers is a separate method"):
        build_parts(lm_config(folder), need_teacher=True)
    make_tokenizer(WORDS[:16], name="small").save_pretrained(folder / "teacher")
    with pytest.raises(ConfigError, match=r"^teacher\.path: the teacher's tokenizer \(16 tokens\) is a smaller "
                                          r"vocabulary than data\.tokenizer \(20 tokens"):
        build_parts(lm_config(folder), need_teacher=True)


def test_a_teacher_with_a_larger_other_tokenizer_is_refused(folder):
    tiny_model(24, seed=1).save_pretrained(folder / "teacher")
    make_tokenizer([*WORDS, "sir", "thou", "art", "fair"], name="big").save_pretrained(folder / "teacher")
    with pytest.raises(ConfigError, match=r"^teacher\.path: the teacher's tokenizer \(24 tokens\) is a larger "
                                          r"vocabulary than data\.tokenizer \(20 tokens; token -> id maps differ\): "
                                          r"token-level distillation needs one shared vocabulary; distilling across "
                                          r"tokenizers is a separate method"):
        build_parts(lm_config(folder), need_teacher=True)


def test_a_wider_teacher_without_its_tokenizer_is_refused(folder):
    tiny_model(24, seed=1).save_pretrained(folder / "teacher")
    with pytest.raises(ConfigError, match=r"^teacher\.path: the teacher's logits are 24 wide and data\.tokenizer has "
                                          r"20 tokens, and no tokenizer is stored beside the teacher"):
        build_parts(lm_config(folder), need_teacher=True)


def test_an_exact_teacher_without_a_tokenizer_is_accepted_silently(folder, capsys):
    tiny_model(20, seed=1).save_pretrained(folder / "teacher")
    parts = build_parts(lm_config(folder), need_teacher=True)
    assert parts.teacher is not None and "note:" not in capsys.readouterr().err
