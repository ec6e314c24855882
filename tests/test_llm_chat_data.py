"""Chat ``messages`` rows rendered through the tokenizer's chat template (loss on the assistant's turns only), and
training batches padded to their own longest row (exact resume unaffected)."""

from __future__ import annotations

import json

import pytest
import torch

from distill.config import ConfigError
from distill.core.batch import IGNORE_INDEX
from distill.tasks.causal_lm import CausalLM
from distill.tasks.causal_lm.data import chat_jsonl, jsonl_data

WORDS = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "the", "king",
         "queen", "of", "love", "and", "death", "my", "lord", "is", "a", "good", "night", "to", "you", "what", "say",
         "be", "brief"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def chat_tokenizer(template: str | None = TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.name_or_path = "tiny-chat"
    if template is not None:
        tok.chat_template = template
    return tok


def ids(words: str) -> list[int]:
    return [WORDS.index(w) for w in words.split()]


CONVERSATIONS = [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what say you"},
     {"role": "assistant", "content": "good night"}],
    [{"role": "user", "content": "my lord"}, {"role": "assistant", "content": "the king"},
     {"role": "user", "content": "and the queen"}, {"role": "assistant", "content": "a queen of love and death"}],
]


def write_chat(path, conversations=CONVERSATIONS):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def test_chat_rows_train_on_the_assistant_turns_only(tmp_path):
    data = chat_jsonl(write_chat(tmp_path / "chat.jsonl"), chat_tokenizer())
    first = ids("<|im_start|> system be brief <|im_end|> <|im_start|> user what say you <|im_end|> <|im_start|> "
                "assistant good night <|im_end|>")
    n = len(first)
    assert data.input_ids[0, :n].tolist() == first and data.attention_mask[0].tolist() == [1] * n + [0] * (
        data.input_ids.shape[1] - n)
    assert data.labels[0, :n].tolist() == [IGNORE_INDEX] * (n - 3) + ids("good night <|im_end|>")
    assert (data.labels[0, n:] == IGNORE_INDEX).all() and (data.input_ids[0, n:] == 0).all()
    # two assistant turns: both learnt; the user's turn between them and every template marker before them not
    second = ids("<|im_start|> user my lord <|im_end|> <|im_start|> assistant the king <|im_end|> <|im_start|> user "
                 "and the queen <|im_end|> <|im_start|> assistant a queen of love and death <|im_end|>")
    assert data.input_ids[1].tolist() == second
    learnt = [t for t, y in zip(second, data.labels[1].tolist(), strict=True) if y != IGNORE_INDEX]
    assert learnt == ids("the king <|im_end|> a queen of love and death <|im_end|>")
    assert data.prompt_lengths.tolist() == [n - 3, len(second) - 7]  # up to the last assistant turn's content
    cut = chat_jsonl(tmp_path / "chat.jsonl", chat_tokenizer(), max_length=12)
    assert cut.input_ids.shape[1] == 12 and cut.labels[0, :12].tolist() == [IGNORE_INDEX] * 12


def test_chat_rows_without_a_chat_template_or_with_bad_messages_are_refused_in_one_line(tmp_path):
    path = write_chat(tmp_path / "chat.jsonl")
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: 'tiny-chat' has no chat template.*data\.train_jsonl"):
        jsonl_data(path, chat_tokenizer(None), 64, "data.train_jsonl")
    bad = [([{"role": "user", "content": "my lord"}], "no 'assistant' message"),
           ([{"role": "assistant", "content": "my lord"}, {"role": "user", "content": "say"}], "starts with the assi"),
           ([{"role": "user"}], "string 'content'")]
    for messages, message in bad:
        with pytest.raises(ValueError, match=message) as e:
            chat_jsonl(write_chat(tmp_path / "bad.jsonl", [messages]), chat_tokenizer())
        assert "\n" not in str(e.value) and "bad.jsonl line 1" in str(e.value)
    counting = "{{ messages | length }} " + TEMPLATE  # not rendered as growing prefixes
    with pytest.raises(ValueError, match="growing prefixes"):
        chat_jsonl(path, chat_tokenizer(counting))
    # prompt/response rows still load through the same entry point
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "my lord", "response": "good night"}) + "\n")
    assert jsonl_data(pairs, chat_tokenizer(None), 64, "data.train_jsonl").labels[0].tolist() == [
        IGNORE_INDEX] * 2 + ids("good night <eos>")


def test_a_jsonl_row_without_its_keys_is_one_unquoted_line_naming_the_key(tmp_path):
    """Mixed rows (a chat file with a prompt/response row, and the reverse): ``data.train_jsonl: <file> line N:
    needs ...`` with no quotes around the message (a KeyError's repr)."""
    from types import SimpleNamespace

    from distill.tasks.causal_lm.data import load_lm_data

    chat = write_chat(tmp_path / "mixed.jsonl")
    with chat.open("a") as f:
        f.write(json.dumps({"prompt": "my lord", "response": "good night"}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "my lord", "response": "good night"}) + "\n"
                     + json.dumps({"messages": CONVERSATIONS[0]}) + "\n")
    for path, message in [(chat, "line 3: needs the key 'messages' (a chat file); has ['prompt', 'response']"),
                          (pairs, "line 2: needs keys 'prompt' and 'response' (or 'completion'); has ['messages']")]:
        data = SimpleNamespace(text=None, train_jsonl=str(path), eval_jsonl=None, max_length=64)
        with pytest.raises(ConfigError) as e:
            load_lm_data(SimpleNamespace(data=data, base_dir=str(tmp_path)), chat_tokenizer())
        assert str(e.value) == f"data.train_jsonl: {path} {message}"


def test_training_batches_are_padded_to_their_longest_row_and_the_loss_is_unchanged(tmp_path):
    from distill.core.outputs import ModelOutput, StepInputs
    from distill.llm.models import small_llama
    from distill.methods import METHODS

    data = chat_jsonl(write_chat(tmp_path / "chat.jsonl", CONVERSATIONS + [CONVERSATIONS[0]]), chat_tokenizer())
    task = CausalLM(len(WORDS))
    raw = task.fetch(data, torch.tensor([0, 2]))  # two short rows of a dataset padded to the long one
    batch = task.prepare(raw, train=True, generator=None)
    longest = int(data.attention_mask[[0, 2]].sum(1).max())
    assert raw.inputs["input_ids"].shape[1] == data.input_ids.shape[1] > longest
    assert batch.inputs["input_ids"].shape[1] == batch.labels.shape[1] == longest
    assert task.prepare(raw, train=False, generator=None).inputs["input_ids"].shape[1] == data.input_ids.shape[1]
    assert task.loss_tokens(batch) == task.loss_tokens(raw) == 6
    model = small_llama(len(WORDS), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=0)
    teacher = small_llama(len(WORDS), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=1)
    with torch.no_grad():
        losses = [METHODS.get("fkl")()(StepInputs(ModelOutput(task.forward(model, b)),
                                                  ModelOutput(task.forward(teacher, b)), b.labels))["loss"]
                  for b in (raw, batch)]
    assert float(losses[0]) > 0 and torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert task.guard_inputs(batch)["input_ids"].sum() == task.guard_inputs(raw)["input_ids"].sum()


def test_a_chat_run_resumed_mid_training_ends_as_an_uninterrupted_one(tmp_path):
    import yaml

    from distill.config import load_config
    from distill.experiment import build_experiment
    from distill.llm.models import small_llama

    tok = chat_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    small_llama(len(WORDS), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=3,
                pad_token_id=0, eos_token_id=1).save_pretrained(tmp_path / "teacher")
    write_chat(tmp_path / "chat.jsonl", CONVERSATIONS * 4)

    def run(name: str, max_steps: int):
        raw = {"task": "causal_lm", "output_dir": str(tmp_path / name),
               "data": {"tokenizer": "tok", "train_jsonl": "chat.jsonl", "eval_jsonl": "chat.jsonl",
                        "chunk_tokens": 5},
               "student": {"arch": "llama", "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                        "intermediate_size": 32}},
               "teacher": {"path": "teacher"}, "methods": [{"name": "fkl"}, {"name": "lm_ce", "weight": 0.5}],
               "train": {"epochs": 2, "batch_size": 2, "grad_accum": 2, "optimizer": "adamw", "lr": 1e-2,
                         "progress": False, "max_steps": max_steps, "checkpoint_every": 1}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        exp = build_experiment(load_config(tmp_path / f"{name}.yaml"))
        summary = exp.fit()
        return exp, summary

    whole, _ = run("whole", 4)
    run("parts", 1)
    parts, summary = run("parts", 4)  # resumes from the step-1 checkpoint, in the middle of the first epoch
    assert summary["steps"] == 4
    for name, p in whole.student.state_dict().items():
        assert torch.equal(parts.student.state_dict()[name], p), name
    assert summary["final"]["perplexity"] == pytest.approx(whole.trainer.evaluate()["perplexity"])
