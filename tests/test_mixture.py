"""Teachers as a mixture (teacher.mixture): per-example routing by a data column, a learned router (MST-Distill's
gate) and a learned aggregator (Meta-DMoE's), from Python and from YAML on images and on a causal LM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from distill.config import ConfigError, parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.mixture import MixtureTeacher, route_indices
from distill.core.outputs import ModelOutput, RunInfo
from distill.core.teachers import FrozenTeacher
from distill.methods.logits.kd import KD
from distill.train.module import DistillModule


class VecTask:
    def forward(self, model, batch):
        return model(batch.inputs)


class Seen(nn.Module):
    """A linear teacher that records the rows (as their first input value) it was run on."""

    def __init__(self, seed: int, d: int = 4, c: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(d, c)
        self.rows: list[torch.Tensor] = []

    def forward(self, x):
        self.rows.append(x[:, 0].clone())
        return self.lin(x) * 3


def batch_of(n=6, route=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    x[:, 0] = torch.arange(n, dtype=torch.float32)  # row ids, to see which member ran on which rows
    meta = {"route": torch.as_tensor(route)} if route is not None else {}
    return Batch(x, torch.randint(0, 3, (n,), generator=g), torch.arange(n), meta)


def test_column_routing_gives_each_example_its_members_output_and_runs_members_only_on_their_rows():
    a, b, c = Seen(1), Seen(2), Seen(3)
    mix = MixtureTeacher([a, b, c], ["news", "code", "chat"], "column")
    route = [2, 0, 0, 1, 2, 0]
    batch = batch_of(route=route)
    out = mix(batch, VecTask())
    for i, r in enumerate(route):
        member = (a, b, c)[r]
        with torch.no_grad():
            want = member.lin(batch.inputs[i:i + 1]) * 3
        assert torch.equal(out.logits[i:i + 1], want)
    assert a.rows[-1].tolist() == [1.0, 2.0, 5.0]
    assert b.rows[-1].tolist() == [3.0]
    assert c.rows[-1].tolist() == [0.0, 4.0]
    assert mix.counts.tolist() == [3, 1, 2]
    assert out.logits.requires_grad is False
    with pytest.raises(ValueError, match=r"route value 3 names no member; allowed: news, code, chat \(or an index"):
        mix(batch_of(route=[0, 1, 2, 3, 0, 0]), VecTask())
    with pytest.raises(ValueError, match="batch.meta\\['route'\\]"):
        mix(batch_of(), VecTask())


def kd_loss_per_example(zs, zt, t=4.0):
    return (t * t * F.kl_div(F.log_softmax(zs / t, -1), F.log_softmax(zt / t, -1), reduction="none",
                             log_target=True).sum(-1))


def test_each_examples_loss_uses_the_teacher_its_route_names():
    a, b = Seen(1), Seen(2)
    torch.manual_seed(0)
    student = nn.Linear(4, 3)
    route = torch.tensor([1, 0, 1, 1, 0, 0])
    batch = batch_of(route=route)
    module = DistillModule(student, Composite({"kd": KD()}), MixtureTeacher([a, b], route="column"), VecTask())
    module.setup(batch)
    loss, _, _ = module(batch)
    with torch.no_grad():
        zs = student(batch.inputs)
        za, zb = a.lin(batch.inputs) * 3, b.lin(batch.inputs) * 3
    per_example = torch.where(route[:, None] == 0, za, zb)
    want = kd_loss_per_example(zs, per_example).mean()
    assert torch.allclose(loss, want, atol=1e-6)
    # and not the loss against either teacher alone, nor against their mean
    for other in (za, zb, (za + zb) / 2):
        assert not torch.allclose(loss, kd_loss_per_example(zs, other).mean(), atol=1e-4)


@pytest.mark.parametrize("route", ["learned", "aggregate"])
def test_learned_router_gets_gradients_and_the_teachers_never_do(route):
    a, b = Seen(1), Seen(2)
    torch.manual_seed(0)
    student = nn.Linear(4, 3)
    mix = MixtureTeacher([a, b], route=route, num_outputs=3, hidden=8, balance=0.5)
    module = DistillModule(student, Composite({"kd": KD()}), mix, VecTask())
    batch = batch_of(8)
    module.setup(batch)
    router_params = set(map(id, mix.router.parameters()))
    assert router_params <= {id(p) for p in module.parameters() if p.requires_grad}  # the optimiser sees them
    assert any(k.startswith("methods.teacher_router.") for k in module.state_dict())  # and checkpoints them
    loss, terms, _ = module(batch)
    assert "teacher.balance" in terms
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mix.router.parameters())
    assert all(p.grad is None and not p.requires_grad for m in (a, b) for p in m.parameters())
    assert student.weight.grad is not None
    # the value of the teacher output: the top-1 member's output exactly, or the softmax-weighted mean
    with torch.no_grad():
        z = torch.stack([a.lin(batch.inputs) * 3, b.lin(batch.inputs) * 3], 1)
        feats = torch.cat([torch.log_softmax(z[:, 0], -1), torch.log_softmax(z[:, 1], -1)], -1)
        gate = torch.softmax(mix.router(feats), -1)
        out = mix(batch, VecTask()).logits
    if route == "learned":
        assert torch.equal(out, z[torch.arange(8), gate.argmax(-1)])
    else:
        assert torch.allclose(out, (gate[:, :, None] * z).sum(1), atol=1e-6)


def test_a_uniform_gate_has_zero_balance_and_a_saturated_gate_still_learns_from_it():
    a, b = Seen(1), Seen(2)
    mix = MixtureTeacher([a, b], route="learned", num_outputs=3, balance=1.0)
    nn.init.zeros_(mix.router.net[-1].weight)
    nn.init.zeros_(mix.router.net[-1].bias)  # every gate is (1/2, 1/2): balance KL(u || mean g) = 0
    mix(batch_of(8), VecTask())
    assert abs(float(mix.take_terms()["balance"].detach())) < 1e-7
    assert mix.take_terms() == {}
    nn.init.constant_(mix.router.net[-1].bias, 0.0)
    with torch.no_grad():
        mix.router.net[-1].bias[0] = 60.0  # every example to member 0: the batch mean gate of member 1 is ~e^-60
    mix(batch_of(8), VecTask())
    balance = mix.take_terms()["balance"]
    assert 25 < float(balance.detach()) < 35  # (log 1/2 - log 1 + log 1/2 + 60) / 2 ~ 29.3
    balance.backward()
    assert mix.router.net[-1].bias.grad[0] > 0 > mix.router.net[-1].bias.grad[1]  # pushes towards balance


def test_student_input_router_reads_the_student_after_it_ran():
    a, b = Seen(1), Seen(2)
    torch.manual_seed(0)
    student = nn.Linear(4, 3)
    mix = MixtureTeacher([a, b], route="learned", router_input="student", num_outputs=3)
    module = DistillModule(student, Composite({"kd": KD()}), mix, VecTask())
    batch = batch_of(8)
    module.setup(batch)
    loss, _, _ = module(batch)
    loss.backward()
    assert all(p.grad is not None for p in mix.router.parameters())
    with pytest.raises(ValueError, match="reads the student's output"):
        mix(batch, VecTask())


def test_route_values_are_refused_naming_the_key_and_the_allowed_members():
    assert route_indices(np.array(["code", "news", "1"], dtype=object)[:2], ["news", "code"], "k").tolist() == [1, 0]
    assert route_indices([1, 0, 1], ["news", "code"], "k").tolist() == [1, 0, 1]
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column: example 2 is routed to 'cartoon', which names no "
                                          r"member of teacher.mixture; allowed: news, code \(or an index 0..1\)$"):
        route_indices(["news", "code", "cartoon"], ["news", "code"], "teacher.mixture.column")
    with pytest.raises(ConfigError, match=r"example 0 is routed to 2,.*allowed: an index 0..1"):
        route_indices([2], [None, None], "k")
    with pytest.raises(ConfigError, match="routed to True"):
        route_indices([True], [None, None], "k")


# -- YAML ----------------------------------------------------------------------------------------------------------
def image_raw(tmp_path, mixture, **teacher):
    return {"task": "image_classification", "output_dir": str(tmp_path / "run"), "seed": 0,
            "data": {"train": "imgs.npz", "augment": None, "normalize": "cifar10", "channels_last": False},
            "student": {"arch": "resnet8x4"},
            "teacher": {"mixture": mixture, **teacher},
            "methods": [{"name": "kd", "ce_weight": 0.5, "kl_weight": 0.5}],
            "train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "progress": False, "cpu": True,
                      }}


def write_images(tmp_path, n=24):
    g = np.random.default_rng(0)
    domains = np.array(["photo", "sketch"])[g.integers(0, 2, n)]
    np.savez(tmp_path / "imgs.npz", images=g.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8),
             labels=np.arange(n) % 3, domain=domains)
    return domains


MEMBERS = [{"name": "photo", "arch": "resnet8x4", "weights": "random"},
           {"name": "sketch", "arch": "resnet8x4", "weights": "random"}]


def member_logits(exp, i, batch):
    return exp.teacher.members[i](batch, exp.task).logits


def test_yaml_column_mixture_on_images_routes_each_image_and_a_routed_cache_serves_the_same(tmp_path):
    from distill.cache import TeacherCache
    from distill.experiment import build_experiment

    domains = write_images(tmp_path)
    mixture = {"route": "column", "column": "domain", "members": MEMBERS}
    exp = build_experiment(parse_config(image_raw(tmp_path, mixture), base_dir=tmp_path))
    assert isinstance(exp.teacher, MixtureTeacher)
    idx = torch.arange(24)
    batch = exp.task.prepare(exp.task.fetch(exp.train_data, idx), train=False, generator=None)
    assert batch.meta["route"].tolist() == [0 if d == "photo" else 1 for d in domains]
    live = exp.teacher(batch, exp.task).logits
    for i, d in enumerate(domains):
        j = 0 if d == "photo" else 1
        assert torch.allclose(live[i], member_logits(exp, j, batch.select(torch.tensor([i])))[0], atol=1e-5)
    assert not torch.allclose(member_logits(exp, 0, batch), member_logits(exp, 1, batch))
    exp.teacher.reset_counts()
    exp.fit()  # one epoch (plus the setup batch) routes every image to its member
    assert exp.teacher.counts.sum() >= 24 and (exp.teacher.counts > 0).all()
    # teacher.cache stores the routed output (one row per example); it serves what the live mixture gives
    cached = build_experiment(parse_config(image_raw(tmp_path, mixture, cache={"path": "routed"}),
                                           base_dir=tmp_path), tmp_path / "run2")
    assert isinstance(cached.teacher, TeacherCache)
    assert torch.allclose(cached.teacher(batch, cached.task).logits, live, atol=1e-5)
    # the cache depends on the routes: other routes, another fingerprint (refused, never served stale)
    np.savez(tmp_path / "imgs.npz", **{**dict(np.load(tmp_path / "imgs.npz")), "domain": domains[::-1]})
    with pytest.raises(Exception, match="(?i)stale|fingerprint|differ"):
        build_experiment(parse_config(image_raw(tmp_path, mixture, cache={"path": "routed", "build": "never"}),
                                      base_dir=tmp_path), tmp_path / "run3")


def test_yaml_learned_mixture_on_images_trains_the_router_only(tmp_path):
    from distill.experiment import build_experiment

    write_images(tmp_path)
    mixture = {"route": "learned", "members": [MEMBERS[0], {**MEMBERS[1], "cache": {"path": "sketch_cache"}}],
               "router": {"hidden": 16, "balance": 1.0}}
    exp = build_experiment(parse_config(image_raw(tmp_path, mixture), base_dir=tmp_path))
    from distill.cache import TeacherCache

    assert isinstance(exp.teacher.members[1], TeacherCache)  # a member may be cached, the others live
    router0 = {k: v.clone() for k, v in exp.teacher.router.state_dict().items()}
    teacher0 = {k: v.clone() for k, v in exp.live_teacher.members[0].model.state_dict().items()}
    exp.fit()
    assert any(not torch.equal(v, exp.teacher.router.state_dict()[k]) for k, v in router0.items())
    assert all(torch.equal(v, exp.live_teacher.members[0].model.state_dict()[k]) for k, v in teacher0.items())
    assert exp.teacher.counts.sum() > 0
    assert (tmp_path / "run" / "methods.safetensors").exists()  # the router is saved with the methods


@pytest.mark.parametrize("change, match", [
    ({"ensemble": [{"arch": "resnet8x4", "weights": "random"}]}, r"^teacher.mixture: give a mixture or an ensemble"),
    ({"arch": "resnet8x4"}, r"^teacher.arch: a mixture's models are its members"),
    ({"mixture": {"route": "column", "members": MEMBERS}}, r"^teacher.mixture.column: required with route: column"),
    ({"mixture": {"route": "learned", "column": "domain", "members": MEMBERS}},
     r"^teacher.mixture.column: only read with route: column"),
    ({"mixture": {"route": "aggregate", "members": MEMBERS}, "cache": {"path": "c"}},
     r"^teacher.cache: the output of route: aggregate changes"),
    ({"mixture": {"route": "column", "column": "d", "members": [MEMBERS[0], MEMBERS[0]]}},
     r"^teacher.mixture.members\[1\].name: 'photo' is also members\[0\]'s name"),
    ({"mixture": {"route": "column", "column": "d", "members": [{**MEMBERS[0], "name": "3"}, MEMBERS[1]]}},
     r"^teacher.mixture.members\[0\].name: '3' is a number"),
    ({"mixture": {"route": "column", "column": "d", "members": [MEMBERS[0]]}},
     r"^teacher.mixture.members: List should have at least 2 items"),
    ({"mixture": {"route": "column", "column": "d", "members": [MEMBERS[0], {"arch": "resnet8x4"}]}},
     r"^teacher.mixture.members\[1\].weights: required"),
    ({"mixture": {"route": "sideways", "members": MEMBERS}}, r"^teacher.mixture.route: "),
])
def test_bad_mixture_configs_are_refused_naming_the_key(tmp_path, change, match):
    raw = image_raw(tmp_path, {"route": "column", "column": "domain", "members": MEMBERS})
    raw["teacher"] = {"mixture": raw["teacher"]["mixture"], **change} if "mixture" not in change else change
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_a_route_value_naming_no_member_is_refused_when_the_data_is_read(tmp_path):
    from distill.experiment import build_experiment

    np.savez(tmp_path / "imgs.npz", images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.arange(4) % 2,
             domain=np.array(["photo", "sketch", "cartoon", "photo"]))
    raw = image_raw(tmp_path, {"route": "column", "column": "domain", "members": MEMBERS})
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column: example 2 is routed to 'cartoon'.*allowed: "
                                          r"photo, sketch \(or an index 0..1\)"):
        build_experiment(parse_config(raw, base_dir=tmp_path))
    raw["teacher"]["mixture"]["column"] = "site"
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column: imgs.npz has no array 'site'; its arrays: "):
        build_experiment(parse_config(raw, base_dir=tmp_path))


def test_yaml_column_mixture_on_an_image_table_reads_the_route_column_beside_the_images(tmp_path):
    """An image table (data.format: jsonl, csv, parquet, arrow) carries the route column beside image and label;
    before, only .npz files could (a table was refused as 'not an .npz file')."""
    pytest.importorskip("datasets")
    from PIL import Image

    from distill.experiment import build_experiment

    g = np.random.default_rng(1)
    labels = g.integers(0, 3, 18)
    rows = []
    for i, label in enumerate(labels):
        path = tmp_path / "img" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        rows.append({"image": f"img/{i:02d}.png", "label": int(label), "domain": "photo" if label == 0 else "sketch"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = image_raw(tmp_path, {"route": "column", "column": "domain", "members": MEMBERS})
    raw["data"] = {**raw["data"], "train": "train.jsonl", "format": "jsonl", "train_per_class": 4}
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    batch = exp.task.prepare(exp.task.fetch(exp.train_data, torch.arange(12)), train=False, generator=None)
    assert batch.meta["route"].tolist() == (batch.labels != 0).long().tolist()  # each image's own row's value
    assert sorted(batch.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column: train.jsonl has no column 'site'; its "
                                          r"columns: image, label, domain"):
        build_experiment(parse_config({**raw, "teacher": {"mixture": {**raw["teacher"]["mixture"],
                                                                      "column": "site"}}}, base_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column: 'domain' .*data.streaming: false"):
        build_experiment(parse_config({**raw, "data": {**raw["data"], "streaming": True}}, base_dir=tmp_path))


# -- causal LM -----------------------------------------------------------------------------------------------------
WORDS = ["<pad>", "<eos>", "<unk>", "the", "king", "queen", "of", "love", "and", "death", "my", "lord", "is",
         "a", "good", "night", "to", "you", "what", "say"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_llama(seed):
    from distill.llm.models import small_llama

    return small_llama(len(WORDS), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=64,
                       eos_token_id=1, pad_token_id=0, seed=seed)


def lm_raw(tmp_path, mixture, **teacher):
    return {"task": "causal_lm", "output_dir": str(tmp_path / "run"),
            "data": {"tokenizer": "tok", "train_jsonl": "train.jsonl", "eval_jsonl": "train.jsonl", "max_length": 16},
            "student": {"arch": "llama", "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                     "intermediate_size": 32}},
            "teacher": {"mixture": mixture, **teacher},
            "methods": [{"name": "fkl"}],
            "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "progress": False,
                      "cpu": True}}


def write_lm(tmp_path, n=12):
    make_tokenizer().save_pretrained(tmp_path / "tok")
    tiny_llama(11).save_pretrained(tmp_path / "poetry")
    tiny_llama(22).save_pretrained(tmp_path / "court")
    g = np.random.default_rng(0)
    rows, domains = [], []
    for _ in range(n):
        d = ["poetry", "court"][int(g.integers(0, 2))]
        words = [WORDS[int(k)] for k in g.integers(3, len(WORDS), 6)]
        rows.append({"prompt": " ".join(words[:3]), "response": " ".join(words[3:]), "task": d})
        domains.append(d)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return domains


LM_MEMBERS = [{"name": "poetry", "path": "poetry"}, {"name": "court", "path": "court"}]


def test_yaml_column_mixture_on_a_causal_lm_routes_each_row_to_the_teacher_its_field_names(tmp_path):
    from distill.experiment import build_experiment

    domains = write_lm(tmp_path)
    exp = build_experiment(parse_config(lm_raw(tmp_path, {"route": "column", "column": "task",
                                                          "members": LM_MEMBERS}), base_dir=tmp_path))
    batch = exp.task.fetch(exp.train_data, torch.arange(len(domains)))
    assert batch.meta["route"].tolist() == [0 if d == "poetry" else 1 for d in domains]
    routed = exp.teacher(batch, exp.task).logits
    members = [tiny_llama(11).eval(), tiny_llama(22).eval()]
    with torch.no_grad():
        for i, d in enumerate(domains):
            want = exp.task.forward(members[0 if d == "poetry" else 1], batch.select(torch.tensor([i])))
            assert torch.allclose(routed[i], want[0], atol=1e-5)
            other = exp.task.forward(members[1 if d == "poetry" else 0], batch.select(torch.tensor([i])))
            assert not torch.allclose(routed[i], other[0], atol=1e-3)
    # the loss of a step is the student's divergence from each row's own teacher
    module = exp.module
    module.setup(batch)
    loss, _, _ = module(batch)
    single = [DistillModule(exp.student, exp.methods, FrozenTeacher(m), exp.task) for m in members]
    per_row = []
    for i, d in enumerate(domains):
        one = batch.select(torch.tensor([i]))
        m = single[0 if d == "poetry" else 1]
        m.setup(one)
        per_row.append(m(one)[0])
    # fkl averages over the valid tokens of the whole batch: rows weigh by their token counts
    tokens = (batch.labels[:, 1:] != -100).sum(1).float()
    assert torch.allclose(loss, (torch.stack(per_row) * tokens).sum() / tokens.sum(), atol=1e-5)
    before = exp.trainer.evaluate()
    exp.fit()
    assert exp.trainer.evaluate()["perplexity"] < before["perplexity"]


def test_causal_lm_mixture_rules(tmp_path):
    write_lm(tmp_path)
    raw = lm_raw(tmp_path, {"route": "column", "column": "task", "members": LM_MEMBERS})
    text = {**raw, "data": {"tokenizer": "tok", "text": "input.txt"}}
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column: 'task' is a field of the data.train_jsonl rows"):
        parse_config(text)
    chunked = {**raw, "data": {**raw["data"], "chunk_tokens": 64}}
    with pytest.raises(ConfigError, match=r"^data.chunk_tokens: a mixture combines its members' logits"):
        parse_config(chunked)
    init = {**raw, "student": {**raw["student"], "init_from_teacher": True}}
    with pytest.raises(ConfigError, match=r"^student.init_from_teacher: copies one teacher's layers"):
        parse_config(init)
    from distill.experiment import build_experiment

    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "the king", "response": "is good", "task": "war"})
                                          + "\n")
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column \(data.train_jsonl\): example 0 is routed to "
                                          r"'war'.*allowed: poetry, court"):
        build_experiment(parse_config(raw, base_dir=tmp_path))


def test_learned_mixture_on_a_causal_lm_reads_member_outputs_pooled_over_valid_tokens(tmp_path):
    from distill.experiment import build_experiment

    write_lm(tmp_path)
    raw = lm_raw(tmp_path, {"route": "aggregate", "members": LM_MEMBERS, "router": {"hidden": 8}})
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    batch = exp.task.fetch(exp.train_data, torch.arange(4))
    exp.module.setup(batch, RunInfo())
    loss, terms, _ = exp.module(batch)
    loss.backward()
    # the LM divergences detach the teacher's logits: without the balance term nothing reaches the router
    assert "teacher.balance" not in terms
    assert all(p.grad is None for p in exp.teacher.router.parameters())
    raw["teacher"]["mixture"]["router"]["balance"] = 0.5
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    exp.module.setup(batch, RunInfo())
    loss, terms, _ = exp.module(batch)
    loss.backward()
    assert float(terms["teacher.balance"].detach()) >= 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in exp.teacher.router.parameters())
    assert all(p.grad is None for m in exp.teacher.members for p in m.model.parameters())
    out = exp.teacher(batch, exp.task)
    assert isinstance(out, ModelOutput) and torch.isfinite(out.logits).all()


@pytest.mark.slow  # two spawned processes
def test_two_processes_train_a_routed_and_a_learned_mixture_as_one_process_does(tmp_path):
    """Routing is per example, so DDP's sharded batches change nothing: a column mixture and a learned router
    (no balance term: its batch mean is per process) train the same student and router in two processes (gloo,
    CPU) as in one; the router is the same on both ranks."""
    import ddp_worker
    from safetensors.torch import load_file
    from test_distributed import TOLERANCE, launch

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    runs = ["mix_column", "mix_learned"]
    finish = launch(two, runs)
    ddp_worker.main(one, runs)
    finish()
    for run in runs:
        ref = load_file(one / run / "rank0.safetensors")
        if run == "mix_learned":
            assert any(k.startswith("methods.teacher_router.") for k in ref)
        for rank in (0, 1):
            got = load_file(two / run / f"rank{rank}.safetensors")
            assert got.keys() == ref.keys()
            assert max(float((got[k] - ref[k]).abs().max()) for k in ref) <= TOLERANCE, (run, rank)
        assert json.loads((two / run / "rank0.json").read_text())["spread"] == 0.0


def test_a_resumed_run_continues_the_learned_router_from_its_checkpoint(tmp_path):
    """The router is saved with the methods in each checkpoint: stopped after step 2 and resumed by new objects,
    the run ends with the router (and student) of the uninterrupted run, bit for bit."""
    from distill.experiment import build_experiment

    write_images(tmp_path)
    mixture = {"route": "learned", "members": MEMBERS, "router": {"hidden": 8, "balance": 1.0}}
    raw = image_raw(tmp_path, mixture)
    raw["deterministic"] = True
    full = build_experiment(parse_config(raw, base_dir=tmp_path), tmp_path / "full")
    initial = {k: v.clone() for k, v in full.teacher.router.state_dict().items()}
    full.fit()
    assert any(not torch.equal(v, full.teacher.router.state_dict()[k]) for k, v in initial.items())
    stopped = {**raw, "train": {**raw["train"], "max_steps": 2, "checkpoint_every": 1}}
    build_experiment(parse_config(stopped, base_dir=tmp_path), tmp_path / "part").fit()
    resumed = build_experiment(parse_config(raw, base_dir=tmp_path), tmp_path / "part")
    resumed.fit()
    for k, v in full.teacher.router.state_dict().items():
        assert torch.equal(v, resumed.teacher.router.state_dict()[k]), k
    for k, v in full.student.state_dict().items():
        assert torch.equal(v, resumed.student.state_dict()[k]), k


def test_aggregate_with_probs_is_the_log_of_the_weighted_mean_probability():
    a, b = Seen(1), Seen(2)
    mix = MixtureTeacher([a, b], route="aggregate", num_outputs=3, reduce="probs")
    batch = batch_of(5)
    out = mix(batch, VecTask()).logits
    with torch.no_grad():
        z = torch.stack([a.lin(batch.inputs) * 3, b.lin(batch.inputs) * 3], 1)
        feats = torch.cat([torch.log_softmax(z[:, 0], -1), torch.log_softmax(z[:, 1], -1)], -1)
        gate = torch.softmax(mix.router(feats), -1)
    want = torch.log((gate[:, :, None] * torch.softmax(z, -1)).sum(1))
    assert torch.allclose(out, want, atol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(5), atol=1e-5)


def test_column_routing_over_top_k_member_caches_serves_each_rows_own_members_top_k(tmp_path):
    from distill.core.topk import TopKLogits
    from distill.experiment import build_experiment

    domains = write_lm(tmp_path)
    members = [{**m, "cache": {"path": f"{m['name']}_topk", "topk": 4}} for m in LM_MEMBERS]
    exp = build_experiment(parse_config(lm_raw(tmp_path, {"route": "column", "column": "task", "members": members}),
                                        base_dir=tmp_path))
    batch = exp.task.fetch(exp.train_data, torch.arange(len(domains)))
    out = exp.teacher(batch, exp.task)
    assert out.logits is None and isinstance(out.topk, TopKLogits) and out.topk.num_classes == len(WORDS)
    models = [tiny_llama(11).eval(), tiny_llama(22).eval()]
    with torch.no_grad():
        for i, d in enumerate(domains):
            logits = exp.task.forward(models[0 if d == "poetry" else 1], batch.select(torch.tensor([i])))[0]
            want = TopKLogits.from_logits(logits, 4)
            assert torch.equal(out.topk.indices[i], want.indices)
            assert torch.allclose(out.topk.logprobs[i], want.logprobs, atol=1e-5)
    exp.fit()  # fkl takes a top-k teacher
    members[1].pop("cache")  # one member dense, the other top-k: refused, not mixed
    with pytest.raises(ConfigError, match=r"^teacher.mixture.members\[0\].cache.topk: every member then gives"):
        parse_config(lm_raw(tmp_path, {"route": "column", "column": "task", "members": members}))
    dense = MixtureTeacher([exp.teacher.members[0], FrozenTeacher(models[1])], route="column")
    with pytest.raises(ValueError, match="dense logits for some examples and only top-k"):
        dense(batch, exp.task)


def test_yaml_column_mixture_on_digits_vectors_from_an_npz_array_and_a_csv_column(tmp_path):
    """The vector family: the route column is an array beside x and y (scikit-learn digits, routed by the parity of
    the original digit), or a CSV column, which is then not a feature."""
    from pathlib import Path

    from distill.experiment import build_experiment

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "digits" / "split0"
    z, digits = np.load(root / "train.npz"), np.load(root / "train_digits.npz")
    x, y, parity = z["x"][:96], z["y"][:96], np.where(digits["y"][:96] % 2 == 0, "even", "odd")
    np.savez(tmp_path / "digits.npz", x=x, y=y, parity=parity)
    members = [{"name": "even", "arch": "mlp", "options": {"hidden": 32}, "weights": "random"},
               {"name": "odd", "arch": "mlp", "options": {"hidden": 32}, "weights": "random"}]
    raw = {"task": "vector_classification", "output_dir": str(tmp_path / "run"),
           "data": {"train": "digits.npz", "eval": "digits.npz"}, "student": {"arch": "mlp", "options": {"hidden": 8}},
           "teacher": {"mixture": {"route": "column", "column": "parity", "members": members}},
           "methods": [{"name": "kd", "ce_weight": 0.5, "kl_weight": 0.5}],
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "progress": False, "cpu": True}}
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    batch = exp.task.prepare(exp.task.fetch(exp.train_data, torch.arange(96)), train=True, generator=None)
    assert batch.meta["route"].tolist() == [0 if p == "even" else 1 for p in parity]
    routed = exp.teacher(batch, exp.task).logits
    with torch.no_grad():
        both = [exp.task.forward(m.model, batch) for m in exp.teacher.members]
    want = torch.where(batch.meta["route"][:, None] == 0, both[0], both[1])
    assert torch.allclose(routed, want, atol=1e-6) and not torch.allclose(both[0], both[1])
    exp.fit()
    # the same rows as CSV: the route column is read as routes, not as a 65th feature
    header = [f"f{i}" for i in range(64)] + ["label", "parity"]
    lines = [",".join(header)] + [",".join([*map(str, r), str(int(lab)), p]) for r, lab, p in zip(x, y, parity)]
    (tmp_path / "digits.csv").write_text("\n".join(lines) + "\n")
    raw["data"] = {"train": "digits.csv"}
    exp = build_experiment(parse_config(raw, base_dir=tmp_path), tmp_path / "run_csv")
    assert exp.extras["in_features"] == 64
    assert exp.train_data.tensors[2].tolist() == [0 if p == "even" else 1 for p in parity]
    lines[5] = lines[5].rsplit(",", 1)[0] + ",seven"
    (tmp_path / "digits.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"^teacher.mixture.column: example 4 is routed to 'seven'.*even, odd"):
        build_experiment(parse_config(raw, base_dir=tmp_path), tmp_path / "run_bad")


def test_cache_build_command_builds_a_mixtures_member_caches(tmp_path, capsys):
    from distill.cache import TeacherCache
    from distill.cli import main
    from distill.experiment import build_experiment

    write_images(tmp_path)
    mixture = {"route": "aggregate", "members": [{**MEMBERS[0], "cache": {"path": "photo_cache"}}, MEMBERS[1]]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(image_raw(tmp_path, mixture)))
    assert main(["cache", "build", str(tmp_path / "run.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["member"] for m in out["members"]] == [0] and out["members"][0]["name"] == "photo"
    assert out["members"][0]["examples"] == 24 and (tmp_path / "photo_cache" / "manifest.json").exists()
    assert main(["cache", "verify", str(tmp_path / "run.yaml")]) == 0
    exp = build_experiment(parse_config(image_raw(tmp_path, mixture), base_dir=tmp_path))
    assert isinstance(exp.teacher.members[0], TeacherCache) and isinstance(exp.teacher.members[1], FrozenTeacher)


def test_teacher_precision_casts_every_member_and_keeps_the_router_float32(tmp_path):
    from distill.experiment import build_experiment

    write_images(tmp_path)
    mixture = {"route": "learned", "members": MEMBERS}
    exp = build_experiment(parse_config(image_raw(tmp_path, mixture, precision="bf16"), base_dir=tmp_path))
    assert all(next(m.model.parameters()).dtype == torch.bfloat16 for m in exp.teacher.members)
    assert all(p.dtype == torch.float32 for p in exp.teacher.router.parameters())
    batch = exp.task.prepare(exp.task.fetch(exp.train_data, torch.arange(4)), train=False, generator=None)
    assert exp.teacher(batch, exp.task).logits.dtype == torch.float32
