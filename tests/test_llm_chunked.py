"""Chunked LM losses (``data.chunk_tokens``): equal to the dense computation in value and gradients, for every
divergence, live and top-k teachers, exact under padding and gradient accumulation, and never holding a
(batch, tokens, vocabulary) tensor."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distill.core.batch import IGNORE_INDEX, Batch
from distill.core.compose import Composite
from distill.core.hidden import HiddenStates
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.core.topk import TopKLogits
from distill.llm.models import small_llama
from distill.methods import METHODS
from distill.tasks.causal_lm import CausalLM, LMData, LMMetrics
from distill.train.config import TrainConfig
from distill.train.module import DistillModule
from distill.train.trainer import Trainer

VOCAB = 300

METHOD_CASES = [("fkl", {}), ("fkl", {"ce_form": True, "temperature": 2.0}), ("rkl", {}), ("gjsd", {"beta": 0.5}),
                ("gjsd", {"beta": 0.0}), ("tvd", {}), ("skl", {"alpha": 0.1}), ("srkl", {"alpha": 0.1}),
                ("taid", {"t_start": 0.4}), ("lm_ce", {}), ("fkl", {"reduction": "sum"}),
                ("rkl", {"reduction": "batch_mean", "t2_scale": True, "temperature": 1.5})]


def tiny_lm(vocab: int = VOCAB, seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    return small_llama(vocab, hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=48,
                       max_positions=64, eos_token_id=1, pad_token_id=0, seed=seed)


def padded_batch(lengths=(12, 7, 9, 4), prompts=(3, 2, 0, 1), seed: int = 0, vocab: int = VOCAB) -> Batch:
    """Right-padded rows of the given lengths; labels -100 on the prompt and the padding."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=g)
    pos = torch.arange(width)
    lens, plens = torch.tensor(lengths)[:, None], torch.tensor(prompts)[:, None]
    mask = (pos < lens).long()
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    labels = torch.where(mask.bool() & (pos >= plens), ids, torch.full_like(ids, IGNORE_INDEX))
    return Batch({"input_ids": ids, "attention_mask": mask, "prompt_lengths": torch.tensor(prompts)}, labels,
                 torch.arange(len(lengths)))


def loss_and_grads(method, student, teacher_out, task, batch, num_tokens=None):
    student.zero_grad(set_to_none=True)
    out = ModelOutput.of(task.forward(student, batch))
    loss = method(StepInputs(out, teacher_out, batch.labels, num_tokens=num_tokens))["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


def assert_same(dense, chunked):
    (ld, gd), (lc, gc) = dense, chunked
    assert torch.allclose(lc, ld, rtol=1e-5, atol=1e-6), (float(lc), float(ld))
    assert gd.keys() == gc.keys() and gd
    for name in gd:
        assert torch.allclose(gc[name], gd[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("name,options", METHOD_CASES)
def test_chunked_equals_dense_with_a_live_teacher(name, options):
    torch.manual_seed(0)
    student, teacher = tiny_lm(seed=1), tiny_lm(VOCAB + 20, seed=2).eval()  # teacher head padded beyond the vocab
    batch = padded_batch()
    results = []
    for chunk in (None, 5):
        task = CausalLM(VOCAB, chunk_tokens=chunk)
        with torch.no_grad():
            t_out = ModelOutput.of(task.forward(teacher, batch))
        assert (t_out.hidden is not None) == (chunk is not None)
        results.append(loss_and_grads(METHODS.get(name)(**options), student, t_out, task, batch))
    assert results[0][0] > 0
    assert_same(*results)


@pytest.mark.parametrize("name,options", [c for c in METHOD_CASES if c[0] != "lm_ce"])
def test_chunked_equals_dense_with_a_stored_top_k_teacher_wider_than_the_batch(name, options):
    """A top-k store holds rows at the dataset's width; the training batch is cut to its own longest row."""
    student, teacher = tiny_lm(seed=3), tiny_lm(seed=4).eval()
    stored = padded_batch(lengths=(9, 7, 5), prompts=(2, 0, 1))
    stored.inputs["input_ids"] = torch.cat([stored.inputs["input_ids"], torch.zeros(3, 4, dtype=torch.long)], 1)
    stored.inputs["attention_mask"] = torch.cat([stored.inputs["attention_mask"], torch.zeros(3, 4, dtype=torch.long)],
                                                1)
    stored.labels = torch.cat([stored.labels, torch.full((3, 4), IGNORE_INDEX)], 1)
    with torch.no_grad():
        top = TopKLogits.from_logits(CausalLM(VOCAB).forward(teacher, stored), 8)
    t_out = ModelOutput(None, topk=top)  # type: ignore[arg-type]
    batch = CausalLM(VOCAB).prepare(stored, train=True, generator=None)
    assert batch.inputs["input_ids"].shape[1] == 9 and top.indices.shape[1] == 13
    full = loss_and_grads(METHODS.get(name)(**options), student, t_out, CausalLM(VOCAB), stored)
    dense = loss_and_grads(METHODS.get(name)(**options), student, t_out, CausalLM(VOCAB), batch)
    chunked = loss_and_grads(METHODS.get(name)(**options), student, t_out, CausalLM(VOCAB, chunk_tokens=4), batch)
    assert_same(dense, chunked)
    assert_same(full, dense)  # padding beyond the batch's longest row changes nothing


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_step_never_holds_a_batch_by_tokens_by_vocabulary_tensor():
    student, teacher = tiny_lm(seed=5), tiny_lm(seed=6).eval()
    batch = padded_batch(lengths=(16, 16, 12, 16), prompts=(0, 0, 0, 0))
    full = 4 * 15 * VOCAB
    for chunk, bound in ((None, None), (4, 4 * VOCAB * 2)):
        task = CausalLM(VOCAB, chunk_tokens=chunk)
        method = METHODS.get("gjsd")(beta=0.5)
        with _LargestTensor() as seen:
            with torch.no_grad():
                t_out = ModelOutput.of(task.forward(teacher, batch))
            loss_and_grads(method, student, t_out, task, batch)
        if chunk is None:
            assert seen.largest >= full
        else:  # the largest tensors are the head and embedding (V x H) and one chunk's logits
            assert seen.largest <= max(bound, VOCAB * 32) < full


@pytest.mark.parametrize("chunk", [None, 3])
def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, chunk):
    """Micro-batches of very different token counts (padding, prompts): with grad_accum 2 x batch 2 the step equals
    batch 4 (token mean over the step's tokens, not the mean of the micro-batch means)."""
    n, width = 4, 14
    lengths, prompts = torch.tensor([14, 3, 4, 13]), torch.tensor([0, 1, 2, 0])  # micro-batches: 4 and 25 tokens
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, VOCAB, (n, width), generator=g)
    pos = torch.arange(width)
    mask = (pos < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.where(mask.bool() & (pos >= prompts[:, None]), ids, torch.full_like(ids, IGNORE_INDEX))
    data = LMData(ids, mask, labels, prompts)
    teacher = tiny_lm(seed=9).eval()
    params = []
    for batch_size, accum in ((4, 1), (2, 2)):
        student = tiny_lm(seed=8)
        methods = Composite({"fkl": METHODS.get("fkl")(), "lm_ce": METHODS.get("lm_ce")()}, {"fkl": 1.0, "lm_ce": 0.5})
        module = DistillModule(student, methods, FrozenTeacher(teacher), CausalLM(VOCAB, chunk_tokens=chunk))
        cfg = TrainConfig(epochs=1, batch_size=batch_size, grad_accum=accum, optimizer="sgd", lr=0.5, momentum=0.0,
                          weight_decay=0.0, schedule="constant", cpu=True, progress=False, checkpoint_every_epochs=0)
        Trainer(module, data, None, cfg, tmp_path / f"run{batch_size}").fit(resume=False)
        params.append({k: v.detach() for k, v in student.named_parameters()})
    moved = 0.0
    for name, p in params[0].items():
        assert torch.allclose(params[1][name], p, rtol=1e-5, atol=1e-6), name
        moved = max(moved, float((p - tiny_lm(seed=8).get_parameter(name).detach()).abs().max()))
    assert moved > 1e-3  # the step did change the student


def test_chunked_metrics_equal_dense_metrics():
    student, teacher = tiny_lm(seed=10), tiny_lm(seed=11).eval()
    batch = padded_batch()
    results = []
    for chunk in (None, 4):
        task = CausalLM(VOCAB, agreement_teacher=teacher, chunk_tokens=chunk)
        metrics = LMMetrics(teacher, task)
        with torch.no_grad():
            metrics.update(task.forward(student, batch), batch)
        results.append(metrics.compute())
    assert results[0]["tokens"] == results[1]["tokens"] == int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    assert results[1]["nll"] == pytest.approx(results[0]["nll"], rel=1e-5)
    assert results[1]["teacher_agreement"] == results[0]["teacher_agreement"]


def test_hidden_states_top_k_and_argmax_equal_the_dense_ones():
    model = tiny_lm(VOCAB - 10, seed=12)  # a head narrower than the vocabulary: -inf columns
    batch = padded_batch(vocab=VOCAB - 10)
    with torch.no_grad():
        dense = CausalLM(VOCAB).forward(model, batch)
        states = CausalLM(VOCAB, chunk_tokens=7).forward(model, batch)
    assert isinstance(states, HiddenStates) and states.shape == tuple(dense.shape)
    assert torch.equal(states.argmax(), dense.argmax(-1))
    top, want = states.topk(5), TopKLogits.from_logits(dense, 5)
    assert torch.equal(top.indices, want.indices) and torch.allclose(top.logprobs, want.logprobs, atol=1e-5)


def test_a_model_whose_logits_are_not_its_head_on_its_hidden_states_is_refused():
    model = tiny_lm(seed=13)
    plain_forward = model.forward

    def scaled(*args, **kwargs):  # e.g. a logit scale applied after the head
        out = plain_forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out

    model.forward = scaled
    with pytest.raises(ValueError, match="chunk_tokens: .*not its output head"):
        CausalLM(VOCAB, chunk_tokens=4).forward(model, padded_batch())


def test_chunked_reduction_none_and_dense_only_methods_are_refused():
    student = tiny_lm(seed=14)
    task = CausalLM(VOCAB, chunk_tokens=4)
    batch = padded_batch()
    out = ModelOutput.of(task.forward(student, batch))
    teacher = ModelOutput(torch.zeros(4, 12, VOCAB))
    with pytest.raises(ValueError, match="reduction 'none'"):
        METHODS.get("fkl")(reduction="none")(StepInputs(out, teacher, batch.labels))
    module = DistillModule(student, Composite({"kd": METHODS.get("kd")()}, {"kd": 1.0}),
                           FrozenTeacher(tiny_lm(seed=15)), task)
    with pytest.raises(ValueError, match=r"methods \['kd'\] need full logits"):
        module.run_student(batch)


def test_a_teacher_under_inference_mode_serves_its_hidden_states():
    student, teacher = tiny_lm(seed=16), tiny_lm(seed=17)
    batch = padded_batch()
    losses = []
    for inference_mode in (False, True):
        module = DistillModule(student, Composite({"rkl": METHODS.get("rkl")()}, {"rkl": 1.0}),
                               FrozenTeacher(teacher), CausalLM(VOCAB, chunk_tokens=6))
        module.teacher_inference_mode = inference_mode
        module.setup(batch)
        loss, _, _ = module(batch)
        loss.backward()
        losses.append(float(loss))
    assert losses[0] > 0 and losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_a_top_k_cache_built_through_the_chunked_task_equals_the_dense_one_and_serves_trimmed_batches(tmp_path):
    from distill.cache import CacheSettings, TeacherCache, build_teacher_cache

    teacher = tiny_lm(seed=18).eval()
    rows = padded_batch(lengths=(10, 6, 8, 3), prompts=(1, 1, 0, 0))
    data = LMData(rows.inputs["input_ids"], rows.inputs["attention_mask"], rows.labels, rows.inputs["prompt_lengths"])
    stored = {}
    for chunk in (None, 3):
        task = CausalLM(VOCAB, chunk_tokens=chunk)
        build_teacher_cache(tmp_path / str(chunk), teacher, task, data, CacheSettings(topk=5), batch_size=3)
        cache = TeacherCache(tmp_path / str(chunk))
        batch = task.prepare(task.fetch(data, torch.tensor([1, 3])), train=True, generator=None)
        assert batch.inputs["input_ids"].shape[1] == 6  # cut to the longest of the two rows; the guard accepts it
        stored[chunk] = cache(batch, task).topk
    assert stored[None].indices.shape == (2, 10, 5)
    assert torch.equal(stored[3].indices, stored[None].indices)
    assert torch.allclose(stored[3].logprobs, stored[None].logprobs, atol=1e-5)


def test_chunk_tokens_with_a_dense_only_method_is_refused_when_the_config_is_read(monkeypatch):
    from distill.config import ConfigError, parse_config
    from distill.methods import METHODS

    # every built-in causal-LM method reads hidden states; a method declared for any task (a plugin's, here kd
    # opened to every task) that needs full logits is what the check refuses
    monkeypatch.setattr(METHODS.get("kd"), "tasks", None)

    raw = {"task": "causal_lm", "output_dir": "run", "data": {"tokenizer": "tok", "text": "input.txt",
                                                             "chunk_tokens": 256},
           "student": {"arch": "llama"}, "teacher": {"path": "teacher"},
           "methods": [{"name": "fkl"}, {"name": "kd"}], "train": {"epochs": 1}}
    with pytest.raises(ConfigError, match=r"^data\.chunk_tokens: methods \['kd'\] need full logits") as e:
        parse_config(raw)
    assert "\n" not in str(e.value)
    raw["methods"] = [{"name": "fkl"}, {"name": "lm_ce"}, {"name": "on_policy"}]
    assert parse_config(raw).data.chunk_tokens == 256


@pytest.mark.parametrize("fn", ["kl", "cross_entropy_form"])
def test_the_unmasked_divergence_path_equals_the_masked_one_and_masks_still_apply(monkeypatch, fn):
    """Without -inf entries the divergences skip their masks (a large share of a step's time over a 49k
    vocabulary): the value and the gradient must be exactly those of the masked formula; with a -inf (padded)
    column the masked formula must still be used (finite, that column contributing nothing)."""
    from distill.methods.llm import divergences as dv

    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(6, 50, generator=g), torch.randn(6, 50, generator=g)

    def value_and_grad(masked: bool, a_logits: torch.Tensor, b_logits: torch.Tensor):
        monkeypatch.setattr(dv, "_no_neginf", (lambda a, b: False) if masked else dv_no_neginf)
        a = a_logits.clone().requires_grad_(True)
        b = b_logits.clone().requires_grad_(True)
        d = getattr(dv, fn)(torch.log_softmax(a, -1), torch.log_softmax(b, -1))
        (d * torch.arange(1.0, 7.0)).sum().backward()
        return d.detach(), a.grad, b.grad

    dv_no_neginf = dv._no_neginf
    assert dv_no_neginf(torch.log_softmax(za, -1), torch.log_softmax(zb, -1))
    fast, masked = value_and_grad(False, za, zb), value_and_grad(True, za, zb)
    for x, y in zip(fast, masked, strict=True):
        assert torch.equal(x, y)
    # a padded column (-inf in both models' logits): the masked path, finite, equal to the unpadded vocabulary
    pad = torch.full((6, 1), -torch.inf)
    a_pad, b_pad = torch.cat([za, pad], -1), torch.cat([zb, pad], -1)
    assert not dv_no_neginf(torch.log_softmax(a_pad, -1), torch.log_softmax(b_pad, -1))
    d_pad, ga, gb = value_and_grad(False, a_pad, b_pad)
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    torch.testing.assert_close(d_pad, fast[0])
    torch.testing.assert_close(ga[:, :-1], fast[1])
    assert (ga[:, -1] == 0).all()


def test_chunk_tokens_auto_chunks_large_vocabularies_when_every_method_reads_hidden_states(monkeypatch):
    """The default, ``auto``: chunks for a large vocabulary (where logits dominate a step), full logits for a
    small one, for a method that needs logits, for a teacher mixture, and whenever the file says ``null``."""
    from distill.config import parse_config
    from distill.methods import METHODS
    from distill.tasks.causal_lm.build import AUTO_CHUNK_MIN_VOCAB, AUTO_CHUNK_TOKENS, resolve_chunk_tokens

    monkeypatch.setattr(METHODS.get("kd"), "tasks", None)
    raw = {"task": "causal_lm", "output_dir": "run", "data": {"tokenizer": "tok", "text": "input.txt"},
           "student": {"arch": "llama"}, "teacher": {"path": "teacher"},
           "methods": [{"name": "fkl"}, {"name": "lm_ce"}], "train": {"epochs": 1}}
    cfg = parse_config(raw)
    assert cfg.data.chunk_tokens == "auto"
    assert resolve_chunk_tokens(cfg, AUTO_CHUNK_MIN_VOCAB) == AUTO_CHUNK_TOKENS
    assert resolve_chunk_tokens(cfg, AUTO_CHUNK_MIN_VOCAB - 1) is None
    with_kd = parse_config({**raw, "methods": [{"name": "fkl"}, {"name": "kd"}]})  # no error: auto falls back
    assert resolve_chunk_tokens(with_kd, 49152) is None
    off = parse_config({**raw, "data": {**raw["data"], "chunk_tokens": None}})
    assert resolve_chunk_tokens(off, 49152) is None
    fixed = parse_config({**raw, "data": {**raw["data"], "chunk_tokens": 64}})
    assert resolve_chunk_tokens(fixed, 100) == 64


def test_auto_chunks_give_full_logits_for_a_model_whose_head_check_fails():
    """Under ``auto`` (strict_chunks False) a model with a logit scale is served by its full logits instead of
    being refused, and the loss with the other model's hidden states equals the all-dense loss."""
    teacher, student = tiny_lm(seed=13), tiny_lm(seed=18)
    plain_forward = teacher.forward

    def scaled(*args, **kwargs):
        out = plain_forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out

    teacher.forward = scaled
    batch = padded_batch()
    auto = CausalLM(VOCAB, chunk_tokens=4, strict_chunks=False)
    t_out = auto.forward(teacher, batch)
    assert isinstance(t_out, torch.Tensor) and t_out.shape == (4, 12, VOCAB)
    assert isinstance(auto.forward(student, batch), HiddenStates)
    method = METHODS.get("fkl")()
    dense_task = CausalLM(VOCAB)
    dense = loss_and_grads(method, student, ModelOutput.of(dense_task.forward(teacher, batch)), dense_task, batch)
    chunked = loss_and_grads(method, student, ModelOutput.of(auto.forward(teacher, batch)), auto, batch)
    assert_same(dense, chunked)
