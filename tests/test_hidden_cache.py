"""``teacher.cache.hidden``: a causal LM teacher stored as its final hidden states (H values per token) and its
output head (once per cache). Served to the chunked losses, the recomputed logits give the live dense teacher's
losses and gradients; the store is H x dtype bytes per token; a stale store is refused naming what changed; the
config refuses the option where there is no output head, or no chunked path to read it."""

from __future__ import annotations

import pytest
import torch

from distill.cache import CacheError, CacheSettings, TeacherCache, build_teacher_cache, cache_fingerprint
from distill.core.batch import IGNORE_INDEX, Batch
from distill.core.outputs import ModelOutput, StepInputs
from distill.llm.models import small_llama
from distill.methods import METHODS
from distill.tasks.causal_lm import CausalLM, LMData

VOCAB, HIDDEN = 300, 32


def tiny_lm(vocab: int = VOCAB, seed: int = 0) -> torch.nn.Module:
    return small_llama(vocab, hidden_size=HIDDEN, num_layers=1, num_heads=2, intermediate_size=48,
                       max_positions=64, eos_token_id=1, pad_token_id=0, seed=seed)


def lm_data(lengths=(12, 7, 9, 4, 11, 6), seed: int = 0) -> LMData:
    """Right-padded rows; labels -100 on the first token and the padding."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), width), generator=g)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
    labels[:, 0] = IGNORE_INDEX
    return LMData(ids, mask, labels)


def build(path, teacher, task, data, settings) -> TeacherCache:
    build_teacher_cache(path, teacher, task, data, settings, batch_size=4, shard_size=4)
    return TeacherCache(path, expected=cache_fingerprint(teacher, task, data, settings))


def loss_and_grads(name: str, options: dict, student, t_out: ModelOutput, task: CausalLM, batch: Batch,
                   progress: float = 0.3):
    method = METHODS.get(name)(**options)
    student.zero_grad(set_to_none=True)
    out = ModelOutput.of(task.forward(student, batch))
    loss = method(StepInputs(out, t_out, batch.labels, progress=progress))["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,options", [("fkl", {}), ("rkl", {}), ("taid", {"t_start": 0.4}),
                                          ("gjsd", {"beta": 0.5}), ("skl", {"alpha": 0.1})])
def test_hidden_store_gives_the_live_dense_teachers_losses_and_gradients(tmp_path, name, options):
    teacher = tiny_lm(VOCAB + 20, seed=2).eval()  # a head wider than the vocabulary: cut to it when served
    data = lm_data()
    chunked = CausalLM(VOCAB, chunk_tokens=5)
    cache = build(tmp_path / "h", teacher, chunked, data, CacheSettings(hidden=True))
    assert cache.kind == "hidden"
    dense = CausalLM(VOCAB)  # the reference: full logits of the live teacher and the student, no chunks
    student = tiny_lm(seed=1)
    batch = chunked.prepare(chunked.fetch(data, torch.tensor([1, 3, 5])), train=True, generator=None)
    assert batch.inputs["input_ids"].shape[1] < data.input_ids.shape[1]  # cut to its longest row; store is wider
    served = cache(batch, chunked)
    assert served.logits is None and served.hidden is not None
    with torch.no_grad():
        live = ModelOutput.of(dense.forward(teacher, batch))
    ref_loss, ref_grads = loss_and_grads(name, options, student, live, dense, batch)
    got_loss, got_grads = loss_and_grads(name, options, student, served, chunked, batch)
    assert float(ref_loss) > 0
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert ref_grads.keys() == got_grads.keys() and ref_grads
    for n in ref_grads:
        torch.testing.assert_close(got_grads[n], ref_grads[n], rtol=1e-5, atol=1e-6, msg=n)
    # served to a task without chunks, the store gives the dense logits themselves
    full = cache(dense.prepare(dense.fetch(data, torch.tensor([1, 3, 5])), train=False, generator=None), dense)
    with torch.no_grad():
        want = dense.forward(teacher, dense.fetch(data, torch.tensor([1, 3, 5])))
    assert full.hidden is None and full.logits.shape == want.shape == (3, 12, VOCAB)
    torch.testing.assert_close(full.logits, want, rtol=1e-5, atol=1e-5)


def test_hidden_store_size_per_token_and_the_head_stored_once(tmp_path):
    teacher, data, task = tiny_lm(seed=3).eval(), lm_data(), CausalLM(VOCAB, chunk_tokens=7)
    sizes = {}
    for dtype, nbytes in (("float32", 4), ("float16", 2)):
        cache = build(tmp_path / dtype, teacher, task, data, CacheSettings(hidden=True, dtype=dtype))
        spec = cache.store.specs["hidden"]
        assert spec.shape == (data.input_ids.shape[1], HIDDEN) and spec.dtype == dtype
        hidden_bytes = sum(f.stat().st_size for f in (tmp_path / dtype).glob("shard-*.npy")
                           if f.name.endswith(f".t{list(cache.store.specs).index('hidden')}.npy"))
        tokens = data.input_ids.numel()
        # each shard file carries a .npy header (128 bytes); the rest is H x dtype bytes per token
        shards = len(cache.store.manifest["shards"])
        assert hidden_bytes - 128 * shards == tokens * HIDDEN * nbytes
        weight, bias = cache.head()
        assert bias is None and torch.equal(weight, teacher.get_output_embeddings().weight.float())
        assert cache.store.extras == ["head_weight"]  # stored once, not per example
        sizes[dtype] = cache.store.nbytes
        assert cache.meta["hidden_size"] == HIDDEN and cache.num_classes == VOCAB
    dense = build(tmp_path / "dense", teacher, CausalLM(VOCAB), data, CacheSettings(dtype="float16"))
    assert dense.store.specs["logits"].shape == (data.input_ids.shape[1], VOCAB)


def test_a_damaged_head_is_refused(tmp_path):
    teacher, data, task = tiny_lm(seed=3).eval(), lm_data(), CausalLM(VOCAB, chunk_tokens=7)
    build(tmp_path / "h", teacher, task, data, CacheSettings(hidden=True))
    head = tmp_path / "h" / "extra-head_weight.npy"
    raw = bytearray(head.read_bytes())
    raw[-3] ^= 0x40
    head.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"extra-head_weight\.npy: checksum mismatch"):
        TeacherCache(tmp_path / "h")
    head.unlink()
    with pytest.raises(CacheError, match=r"extra-head_weight\.npy: shard file of 'extra head_weight' is missing"):
        TeacherCache(tmp_path / "h")


def test_a_stale_hidden_store_is_refused_naming_what_changed(tmp_path):
    teacher, data, task = tiny_lm(seed=4).eval(), lm_data(), CausalLM(VOCAB, chunk_tokens=7)
    settings = CacheSettings(hidden=True)
    build(tmp_path / "h", teacher, task, data, settings)

    def open_for(t, d, s):
        return TeacherCache(tmp_path / "h", expected=cache_fingerprint(t, task, d, s))

    with pytest.raises(CacheError, match=r"stale cache.*: teacher \(cache"):
        open_for(tiny_lm(seed=5).eval(), data, settings)
    with pytest.raises(CacheError, match=r"stale cache.*: data \(cache"):
        open_for(teacher, lm_data(seed=1), settings)
    with pytest.raises(CacheError, match=r"stale cache.*stored\.dtype \(cache 'float32', expected 'float16'\)"):
        open_for(teacher, data, CacheSettings(hidden=True, dtype="float16"))
    with pytest.raises(CacheError, match=r"stale cache.*stored\.hidden \(cache True, expected None\)"):
        open_for(teacher, data, CacheSettings())  # a logits store is asked for: not this one
    open_for(teacher, data, settings)
    # a store built before the option (no "hidden" key in its fingerprint) still matches a run without it
    assert "hidden" not in CacheSettings(topk=8).as_dict() and CacheSettings(hidden=True).as_dict()["hidden"]


def test_a_top_k_store_derived_from_a_hidden_store_equals_the_one_from_the_live_teacher(tmp_path):
    teacher, data, task = tiny_lm(seed=6).eval(), lm_data(), CausalLM(VOCAB, chunk_tokens=7)
    hidden = build(tmp_path / "h", teacher, task, data, CacheSettings(hidden=True))
    from_store = build(tmp_path / "k_store", hidden, task, data, CacheSettings(topk=8))
    live = build(tmp_path / "k_live", teacher, task, data, CacheSettings(topk=8))
    assert from_store.store.manifest["fingerprint"] == live.store.manifest["fingerprint"]
    a, b = from_store.store.get(torch.arange(6)), live.store.get(torch.arange(6))
    assert torch.equal(a["topk_indices"], b["topk_indices"])
    torch.testing.assert_close(a["topk_logprobs"], b["topk_logprobs"], rtol=0, atol=1e-5)


def test_a_teacher_that_gives_logits_cannot_be_stored_as_hidden_states(tmp_path):
    with pytest.raises(CacheError, match=r"^teacher\.cache\.hidden: the teacher gave logits"):
        build_teacher_cache(tmp_path / "h", tiny_lm().eval(), CausalLM(VOCAB), lm_data(), CacheSettings(hidden=True))
    with pytest.raises(ValueError, match=r"hidden: .*topk = 8"):
        CacheSettings(hidden=True, topk=8)


def _lm_raw(**cache) -> dict:
    return {"task": "causal_lm", "output_dir": "run", "data": {"tokenizer": "tok", "text": "input.txt"},
            "student": {"arch": "llama"},
            "teacher": {"path": "teacher", "cache": {"path": "runs/t", **cache}},
            "methods": [{"name": "fkl"}], "train": {"epochs": 1}}


def test_the_config_accepts_hidden_for_causal_lm_and_chunks_it_at_any_vocabulary():
    from distill.config import parse_config
    from distill.tasks.causal_lm.build import AUTO_CHUNK_TOKENS, resolve_chunk_tokens

    cfg = parse_config(_lm_raw(hidden=True))
    assert cfg.teacher.cache.hidden is True
    assert resolve_chunk_tokens(cfg, 300) == AUTO_CHUNK_TOKENS  # a small vocabulary, chunked to read the store
    assert resolve_chunk_tokens(parse_config(_lm_raw()), 300) is None


def test_the_config_refuses_hidden_without_an_output_head_or_a_chunked_path(monkeypatch):
    from distill.config import ConfigError, parse_config
    from distill.methods import METHODS

    raw = {"data": {"train": "demo"}, "student": {"arch": "resnet20"}, "methods": [{"name": "kd"}],
           "teacher": {"arch": "resnet56", "weights": "random", "cache": {"path": "runs/c", "hidden": True}}}
    with pytest.raises(ConfigError, match=r"^teacher\.cache\.hidden: .*task image_classification has no output head"):
        parse_config(raw)
    off = _lm_raw(hidden=True)
    off["data"]["chunk_tokens"] = None
    with pytest.raises(ConfigError, match=r"^teacher\.cache\.hidden: .*set data\.chunk_tokens"):
        parse_config(off)
    with pytest.raises(ConfigError, match=r"^teacher\.cache: hidden: .*topk = 64"):
        parse_config(_lm_raw(hidden=True, topk=64))
    monkeypatch.setattr(METHODS.get("kd"), "tasks", None)  # a method that needs full logits (a plugin's, say)
    dense = _lm_raw(hidden=True)
    dense["methods"] = [{"name": "kd"}]
    with pytest.raises(ConfigError, match=r"^teacher\.cache\.hidden: methods \['kd'\] need full logits"):
        parse_config(dense)
    with pytest.raises(ConfigError, match=r"^teacher\.cache\.hidden: "):
        parse_config(_lm_raw(hidden="yes"))


def test_a_soft_capped_teacher_is_stored_with_its_cap_and_served_exactly(tmp_path):
    """Gemma 2's logits are 30 tanh(z / 30) of its head's output z (``final_logit_softcapping``): the cap is read from
    the config, checked against the model's own logits, stored in the manifest and applied when the logits are
    recomputed, so the store still gives the live teacher's losses and gradients."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Gemma2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                    final_logit_softcapping=2.0, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    teacher = transformers.Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(40.0)  # raw logits well past the cap, so it matters
    data, chunked, dense = lm_data(), CausalLM(VOCAB, chunk_tokens=5), CausalLM(VOCAB)
    batch = chunked.prepare(chunked.fetch(data, torch.tensor([0, 2, 4])), train=True, generator=None)
    with torch.no_grad():
        live = dense.forward(teacher, batch)
        raw = teacher.get_output_embeddings()(teacher.get_decoder()(**{k: batch.inputs[k] for k in
                                                                       ("input_ids", "attention_mask")})[0])
    assert float(raw.abs().max()) > 4.0 and float(live.abs().max()) <= 2.0  # the cap acts
    cache = build(tmp_path / "g", teacher, chunked, data, CacheSettings(hidden=True))
    assert cache.meta["logit_softcap"] == 2.0 and cache.meta["logit_scale"] == 1.0
    served = cache(batch, chunked)
    torch.testing.assert_close(served.hidden.dense(), live, rtol=1e-5, atol=1e-5)
    student = tiny_lm(seed=1)
    ref = loss_and_grads("fkl", {}, student, ModelOutput.of(live), dense, batch)
    got = loss_and_grads("fkl", {}, student, served, chunked, batch)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    for n in ref[1]:
        torch.testing.assert_close(got[1][n], ref[1][n], rtol=1e-5, atol=1e-6, msg=n)
