"""Causal-LM task, vocab alignment, offline top-k store, sequence sources (teacher, on-policy) on a tiny Llama."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import shared_path

from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import RunInfo
from distill.core.teachers import FrozenTeacher
from distill.llm.generation import OnPolicy, generate_completions, teacher_sequences
from distill.llm.models import init_from_teacher, small_llama
from distill.llm.topk_store import TopKStore, TopKStoreTeacher, build_topk_store, model_fingerprint, truncate_store
from distill.methods.lm_divergences import ForwardKL, GeneralizedJSD
from distill.tasks.causal_lm import (
    CausalLM,
    LMMetrics,
    align_vocab,
    check_same_tokenizer,
    prompt_response_jsonl,
    text_blocks,
)
from distill.train.module import DistillModule

YAML_EXAMPLES = {"on_policy": "{name: on_policy, weight: 1.0, lmbda: 0.5, max_new_tokens: 64, temperature: 0.9}"}

WORDS = ["<pad>", "<eos>", "<unk>", "the", "king", "queen", "of", "love", "and", "death", "my", "lord", "is",
         "a", "good", "night", "to", "you", "what", "say"]


def make_tokenizer(words=WORDS, name="tiny"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.name_or_path = name
    return tok


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def tiny_model(vocab=20, seed=0, hidden=16, layers=1):
    return small_llama(vocab, hidden_size=hidden, num_layers=layers, num_heads=2, intermediate_size=32,
                       max_positions=64, eos_token_id=1, pad_token_id=0, seed=seed)


def corpus(tmp_path, n_words=200):
    g = torch.Generator().manual_seed(0)
    words = [WORDS[int(i)] for i in torch.randint(3, len(WORDS), (n_words,), generator=g)]
    path = tmp_path / "input.txt"
    path.write_text(" ".join(words))
    return path


def test_text_blocks_fixed_contiguous_split(tmp_path, tok):
    path = corpus(tmp_path, 200)
    train, val = text_blocks(path, tok, block_size=16, val_fraction=0.25)
    assert train.input_ids.shape == (9, 16) and val.input_ids.shape == (3, 16)  # 200 // 16 = 12 blocks
    ids = tok(path.read_text(), add_special_tokens=False)["input_ids"]
    assert train.input_ids.flatten().tolist() == ids[:144]
    assert val.input_ids.flatten().tolist() == ids[144:192]
    assert torch.equal(train.labels, train.input_ids)
    again, _ = text_blocks(path, tok, block_size=16, val_fraction=0.25)
    assert again.fingerprint() == train.fingerprint()
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        text_blocks(tmp_path / "nope.txt", tok)


def test_prompt_response_jsonl_masks_prompt_and_padding(tmp_path, tok):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "what say you", "response": "good night"}) + "\n"
                    + json.dumps({"prompt": "my lord", "completion": "the king is a king of love"}) + "\n")
    data = prompt_response_jsonl(path, tok)
    assert data.input_ids.shape == (2, 10)
    assert data.prompt_lengths.tolist() == [3, 2]
    assert data.labels[0].tolist() == [-100] * 3 + [14, 15, 1] + [-100] * 4  # good night <eos>, then padding
    assert data.attention_mask[0].tolist() == [1] * 6 + [0] * 4
    assert data.labels[1, :2].tolist() == [-100, -100] and data.labels[1, -1].item() == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl line 1"):
        prompt_response_jsonl(bad, tok)


def test_vocab_alignment_slices_padding_rows_and_pads_short_heads(tok):
    logits = torch.randn(2, 3, 24)
    assert torch.equal(align_vocab(logits, 20), logits[..., :20])
    short = align_vocab(logits[..., :18], 20)
    assert short.shape == (2, 3, 20) and torch.isinf(short[..., 18:]).all()
    # teacher with an embedding padded to 24 rows, student with exactly 20: the task aligns both
    task = CausalLM(len(tok))
    teacher, student = tiny_model(24, seed=1), tiny_model(20, seed=2)
    batch = Batch({"input_ids": torch.randint(3, 20, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long),
                   "prompt_lengths": torch.zeros(2, dtype=torch.long)}, torch.randint(3, 20, (2, 6)))
    zt, zs = task.forward(teacher, batch), task.forward(student, batch)
    assert zt.shape == zs.shape == (2, 6, 20)
    from distill.core.outputs import ModelOutput, StepInputs
    loss = ForwardKL()(StepInputs(ModelOutput(zs), ModelOutput(zt), batch.labels))["loss"]
    assert torch.isfinite(loss)


def test_different_tokenizers_are_refused_naming_both(tok):
    assert check_same_tokenizer(tok, make_tokenizer(name="copy")) == len(WORDS)
    swapped = list(WORDS)
    swapped[3], swapped[4] = swapped[4], swapped[3]  # same size, different contents
    other = make_tokenizer(swapped, name="other-tok")
    with pytest.raises(ValueError, match="'tiny'.*'other-tok'"):
        check_same_tokenizer(tok, other)


def test_metrics_perplexity_and_teacher_agreement():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 0, 1]])  # targets: token 0 at pos 0 (p 0.5), token 1 at pos 1 (p 0.8)
    m = LMMetrics()
    m.update(logits, Batch({}, labels, meta={"teacher_top1": torch.tensor([[0, 2, 0]])}))
    out = m.compute()
    assert out["perplexity"] == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.8)) / 2))
    assert out["teacher_agreement"] == pytest.approx(0.5)  # argmax 0 = 0, argmax 1 != 2


def test_topk_store_build_reload_serve_and_integrity(tmp_path, tok):
    task = CausalLM(len(tok))
    train, _ = text_blocks(corpus(tmp_path), tok, block_size=8, val_fraction=0.2)
    teacher = tiny_model(seed=3)
    fp = model_fingerprint(teacher)
    store = build_topk_store(teacher, task, train, tmp_path / "k5", k=5, batch_size=3, dtype="float32",
                             fingerprint=fp, dense_path=tmp_path / "dense.npy")
    rows = torch.tensor([4, 0])
    topk = store.rows(rows)
    logits = task.forward(teacher, task.fetch(train, rows)).detach()
    want = torch.log_softmax(logits, -1).topk(5, -1)
    assert torch.equal(topk.indices, want.indices)
    assert torch.allclose(topk.logprobs, want.values, atol=1e-5)
    assert (topk.tail_mass() > 0).all()  # the tail is kept, never renormalised away
    dense = np.load(tmp_path / "dense.npy")
    assert np.allclose(dense[4], torch.log_softmax(logits[0], -1).numpy(), atol=2e-2)
    out = TopKStoreTeacher(store)(task.fetch(train, rows), task)
    assert out.is_sparse and torch.equal(out.topk.indices, topk.indices)
    k2 = truncate_store(store, tmp_path / "k2", 2)
    assert torch.equal(k2.rows(rows).indices, topk.indices[..., :2])
    with pytest.raises(ValueError, match="another teacher"):
        TopKStore(tmp_path / "k5", expected_fingerprint="0" * 64)
    with pytest.raises(ValueError, match="different top-k store"):
        build_topk_store(teacher, task, train, tmp_path / "k5", k=5, fingerprint="other")
    gen = Batch(task.fetch(train, rows).inputs, None, None, {"generated": True})
    with pytest.raises(ValueError, match="on-policy"):
        TopKStoreTeacher(store)(gen, task)
    arr = np.load(tmp_path / "k5" / "logprobs.npy", mmap_mode="r+")
    arr[0, 0, 0] += 1.0
    arr.flush()
    del arr
    with pytest.raises(ValueError, match="checksum"):
        TopKStore(tmp_path / "k5")


def test_topk_store_resumes_from_rows_done(tmp_path, tok):
    task = CausalLM(len(tok))
    train, _ = text_blocks(corpus(tmp_path), tok, block_size=8, val_fraction=0.2)
    teacher = tiny_model(seed=3)
    full = build_topk_store(teacher, task, train, tmp_path / "a", k=3, batch_size=4, fingerprint="f")
    # simulate an interruption after the first 4 rows: rows past it are garbage, rows_done says 4
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    arr = np.load(tmp_path / "a" / "indices.npy", mmap_mode="r+")
    arr[4:] = 0
    arr.flush()
    del arr
    meta["rows_done"] = 4
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="incomplete"):
        TopKStore(tmp_path / "a")
    resumed = build_topk_store(teacher, task, train, tmp_path / "a", k=3, batch_size=4, fingerprint="f")
    assert np.array_equal(np.asarray(resumed.indices), np.asarray(full.indices))


def test_generation_labels_mask_prompt_and_after_eos():
    model = tiny_model(seed=4)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: zero the embedding, then force EOS after one token via a bias trick
    data = generate_completions(model, [[3, 4, 5], [10]], pad_id=0, eos_id=1, max_new_tokens=5, do_sample=False)
    assert data.prompt_lengths.tolist() == [3, 1]
    assert data.input_ids[0, :3].tolist() == [3, 4, 5] and data.input_ids[1, 0].item() == 10
    assert (data.labels[0, :3] == -100).all() and data.labels[1, 0].item() == -100
    for i in range(2):
        gen = data.labels[i][data.attention_mask[i].bool()][data.prompt_lengths[i]:].tolist()
        assert -100 not in gen and (1 not in gen[:-1])  # nothing after the first EOS; the EOS itself kept
    a = generate_completions(tiny_model(seed=5), [[3, 4]], pad_id=0, eos_id=1, max_new_tokens=6, seed=7)
    b = generate_completions(tiny_model(seed=5), [[3, 4]], pad_id=0, eos_id=1, max_new_tokens=6, seed=7)
    assert torch.equal(a.input_ids, b.input_ids)  # sampling is reproducible from the seed


def test_teacher_sequences_are_generated_once_and_cached(tmp_path, tok):
    train, _ = text_blocks(corpus(tmp_path), tok, block_size=8, val_fraction=0.2)
    teacher = tiny_model(seed=6)
    kw = dict(pad_id=0, eos_id=1, fingerprint=model_fingerprint(teacher), max_new_tokens=4, prefix_tokens=3)
    first = teacher_sequences(teacher, train.subset(slice(0, 4)), tmp_path / "seq", **kw)
    assert first.prompt_lengths.tolist() == [3] * 4 and (first.labels[:, :3] == -100).all()
    mtime = (tmp_path / "seq" / "sequences.safetensors").stat().st_mtime_ns
    again = teacher_sequences(teacher, train.subset(slice(0, 4)), tmp_path / "seq", **kw)
    assert torch.equal(again.input_ids, first.input_ids)
    assert (tmp_path / "seq" / "sequences.safetensors").stat().st_mtime_ns == mtime  # read, not regenerated
    kw["fingerprint"] = "another-teacher"
    teacher_sequences(teacher, train.subset(slice(0, 4)), tmp_path / "seq", **kw)
    assert (tmp_path / "seq" / "sequences.safetensors").stat().st_mtime_ns != mtime


def test_teacher_generation_killed_mid_way_resumes_to_the_uninterrupted_sequences(tmp_path, tok, monkeypatch):
    import distill.llm.generation as gen

    train, _ = text_blocks(corpus(tmp_path), tok, block_size=8, val_fraction=0.2)
    data = train.subset(slice(0, 7))
    teacher = tiny_model(seed=6)
    kw = dict(pad_id=0, eos_id=1, fingerprint=model_fingerprint(teacher), max_new_tokens=4, prefix_tokens=3,
              do_sample=True, batch_size=2, seed=3)
    whole = teacher_sequences(teacher, data, tmp_path / "whole", **kw)

    real, calls = gen.generate_completions, []

    def dies_on_the_third(*a, **k):
        calls.append(k["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(gen, "generate_completions", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        teacher_sequences(teacher, data, tmp_path / "seq", **kw)
    assert not (tmp_path / "seq" / "meta.json").exists()  # not taken for a finished cache
    assert len(list((tmp_path / "seq").glob("parts-*/*.safetensors"))) == 2
    calls.clear()
    monkeypatch.setattr(gen, "generate_completions", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    again = teacher_sequences(teacher, data, tmp_path / "seq", **kw)
    assert calls == [3 + 4, 3 + 6]  # only the batches that were not written (first rows 4 and 6)
    for name in ("input_ids", "attention_mask", "labels", "prompt_lengths"):
        assert torch.equal(getattr(again, name), getattr(whole, name))
    assert not list((tmp_path / "seq").glob("parts-*"))  # merged, then removed
    assert not list((tmp_path / "seq").glob("*.tmp"))


def test_on_policy_through_distill_module_trains_on_student_samples(tmp_path, tok):
    task = CausalLM(len(tok))
    train, _ = text_blocks(corpus(tmp_path), tok, block_size=8, val_fraction=0.2)
    student, teacher = tiny_model(seed=7), tiny_model(seed=8, hidden=32)
    methods = Composite({"on_policy": OnPolicy(lmbda=1.0, max_new_tokens=4, prefix_tokens=3),
                         "gjsd": GeneralizedJSD(beta=0.5)})
    module = DistillModule(student, methods, FrozenTeacher(teacher), task)
    batch = task.fetch(train, torch.arange(3))
    module.setup(batch, RunInfo(student=student, task=task))
    loss, terms, out = module(batch, generator=torch.Generator().manual_seed(0))
    assert methods.methods["on_policy"].generated_steps == 1
    assert out.logits.shape[1] <= 3 + 4  # the prompt plus at most 4 sampled tokens, not the 8-token block
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    never = Composite({"on_policy": OnPolicy(lmbda=0.0), "gjsd": GeneralizedJSD()})
    m2 = DistillModule(student, never, FrozenTeacher(teacher), task)
    m2.setup(batch, RunInfo(student=student, task=task))
    _, _, out2 = m2(batch, generator=torch.Generator().manual_seed(0))
    assert out2.logits.shape[1] == 8 and never.methods["on_policy"].generated_steps == 0


def test_init_from_teacher_needs_equal_widths():
    teacher = tiny_model(seed=9, layers=3)
    student = init_from_teacher(tiny_model(seed=10, layers=2), teacher)
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    with pytest.raises(ValueError, match="hidden_size"):
        init_from_teacher(tiny_model(seed=10, hidden=8), teacher)


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_is_shared_by_student_and_teacher():
    path = shared_path("models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
    from distill.llm.models import load_gguf_tokenizer

    tok = load_gguf_tokenizer(path)
    assert len(tok) == 49152 and tok.pad_token_id is not None
    assert check_same_tokenizer(tok, tok) == 49152
    with pytest.raises(ValueError, match="differ"):
        check_same_tokenizer(tok, make_tokenizer())


def test_yaml_causal_lm_run_trains_and_reports_perplexity(tmp_path, tok):
    import yaml

    from distill.config import ConfigError, load_config, parse_config
    from distill.experiment import build_experiment

    tok.save_pretrained(tmp_path / "tok")
    tiny_model(seed=11, hidden=32).save_pretrained(tmp_path / "teacher")
    corpus(tmp_path, 400)
    raw = {"task": "causal_lm", "output_dir": str(tmp_path / "run"),
           "data": {"tokenizer": "tok", "text": "input.txt", "block_size": 16, "val_fraction": 0.2},
           "student": {"arch": "llama", "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                    "intermediate_size": 32}},
           "teacher": {"path": "teacher"},
           "methods": [{"name": "lm_ce", "weight": 0.5}, {"name": "fkl", "weight": 0.5}],
           "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    exp = build_experiment(load_config(tmp_path / "run.yaml"))
    before = exp.trainer.evaluate()
    exp.fit()
    after = exp.trainer.evaluate()
    assert set(after) >= {"perplexity", "teacher_agreement"}
    assert after["perplexity"] < before["perplexity"]
    bad = {k: v for k, v in raw.items() if k != "data"}
    with pytest.raises(ConfigError, match="^data: required"):
        parse_config(bad)
    image_cfg = {k: v for k, v in raw.items() if k != "task"}
    with pytest.raises(ConfigError, match=r"^data\.train: required key is missing"):
        parse_config(image_cfg)


def test_cache_build_command_writes_a_topk_cache_the_run_serves(tmp_path, tok, capsys):
    """``distill cache build`` stores the teacher's top-k log-probabilities of a causal_lm config (the command that
    replaced ``python -m distill.llm.build_store``); the run then serves them instead of running the teacher."""
    import json

    import yaml

    from distill.cache import TeacherCache
    from distill.cli import main
    from distill.config import load_config
    from distill.experiment import build_experiment

    tok.save_pretrained(tmp_path / "teacher")
    tiny_model(seed=12).save_pretrained(tmp_path / "teacher")
    text = corpus(tmp_path, 200)
    raw = {"task": "causal_lm", "output_dir": str(tmp_path / "run"),
           "data": {"tokenizer": "teacher", "text": "input.txt", "block_size": 16},
           "student": {"arch": "llama", "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                    "intermediate_size": 32}},
           "teacher": {"path": "teacher", "cache": {"path": "store", "topk": 4}},
           "methods": [{"name": "fkl"}], "train": {"epochs": 1, "batch_size": 4, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["cache", "build", str(tmp_path / "run.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    train, _ = text_blocks(text, tok, block_size=16)
    assert out["examples"] == len(train) and out["meta"]["kind"] == "topk" and out["meta"]["k"] == 4
    exp = build_experiment(load_config(tmp_path / "run.yaml"))
    assert isinstance(exp.teacher, TeacherCache)
    task = exp.task
    served = exp.teacher(task.fetch(exp.train_data, torch.tensor([0])), task).topk
    assert torch.equal(served.indices[0, :, 0], task_top1(tiny_model(seed=12), train))


def task_top1(model, data):
    with torch.no_grad():
        return CausalLM(20).forward(model, CausalLM(20).fetch(data, torch.tensor([0])))[0].argmax(-1)
