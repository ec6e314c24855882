"""Integer labels that are not 0..K-1 (e.g. 1..K) never make a silent empty class: refused naming the file and
``data.integer_labels``, or taken as class names (``names``) or kept as indices (``indices``) when the config says so;
in the text, table, image npz and vector readers; a teacher's class count must match what the data became."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill.config import ConfigError, parse_config
from distill.data.text import load_text_classification
from distill.experiment import build_experiment

HINT = r"data\.integer_labels: names"


def test_text_file_labels_from_one(tmp_path, capsys):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("label\ttext\n1\tbad\n2\tok\n3\tgood\n1\tawful\n")
    dev.write_text("label\ttext\n3\tgreat\n1\tpoor\n")
    with pytest.raises(ConfigError, match=rf"data\.train: .*train\.tsv: integer labels must be 0\.\.K-1, "
                                          rf"but the labels \(1\.\.3\) start at 1.*{HINT}"):
        load_text_classification(train, integer_labels="strict", key="data.train")
    ex = load_text_classification(train, integer_labels="names", key="data.train")
    assert ex.classes == ["1", "2", "3"] and ex.labels == [0, 1, 2, 0]
    assert "taken as class names" in capsys.readouterr().err
    assert load_text_classification(dev, classes=ex.classes, integer_labels="names").labels == [2, 0]
    kept = load_text_classification(train, integer_labels="indices", key="data.train")
    assert kept.classes == ["0", "1", "2", "3"] and kept.labels == [1, 2, 3, 1]
    assert "1 without an example (0)" in capsys.readouterr().err
    gap = tmp_path / "gap.tsv"
    gap.write_text("label\ttext\n0\tbad\n2\tgood\n")
    with pytest.raises(ConfigError, match=r"no example has label 1"):
        load_text_classification(gap, key="data.train")


def test_table_labels_from_one(tmp_path):
    from distill.data.tables import labels_of, read_table

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [("a", 1), ("b", 2), ("c", 2)]))
    table = read_table(path, "jsonl", "data.train")
    with pytest.raises(ConfigError, match=rf"data\.train: .*train\.jsonl: column 'label': integer labels.*{HINT}"):
        labels_of(table, "label", "data.train", path)
    labels, names = labels_of(table, "label", "data.train", path, integer_labels="names")
    assert names == ["1", "2"] and labels.tolist() == [0, 1, 1]
    mapped, _ = labels_of(table, "label", "data.eval", path, ["0", "1", "2"], integer_labels="names")
    assert mapped.tolist() == [1, 2, 2]  # by name, not as indices
    with pytest.raises(ConfigError, match=r"label 1 .* not among the training classes"):
        labels_of(table, "label", "data.eval", path, ["2", "3"], integer_labels="names")


def test_image_npz_labels_from_one(tmp_path):
    from distill.tasks.image.data import load_split
    from distill.tasks.image.section import ImageData

    g = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", images=g.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8),
             labels=np.array([1, 2, 3, 1, 2, 3]))
    np.savez(tmp_path / "test.npz", images=g.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8), labels=np.array([3, 2]))

    def load(mode: str, key: str = "train", classes=None):
        d = ImageData(train="train.npz", eval="test.npz", integer_labels=mode, train_split=None, eval_split=None)
        return load_split(d, f"{key if key == 'train' else 'test'}.npz", None, None, str(tmp_path), key,
                          classes=classes)

    with pytest.raises(ConfigError, match=rf"data\.train: .*train\.npz: integer labels.*{HINT}"):
        load("strict")
    train = load("names")
    assert train.classes == ["1", "2", "3"] and train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert load("names", "eval", train.classes).labels.tolist() == [2, 1]
    kept = load("indices")
    assert kept.num_classes == 4 and kept.labels.tolist() == [1, 2, 3, 1, 2, 3]


def vector_config(tmp_path: Path, mode: str | None, teacher: dict | None = None) -> object:
    g = np.random.default_rng(0)
    x = g.normal(size=(30, 4)).astype("float32")
    y = np.arange(30) % 3 + 1  # classes numbered 1..3
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:9], y=y[:9])
    raw = yaml.safe_load("""
task: vector_classification
data: {train: train.npz, eval: test.npz}
student: {arch: mlp, options: {hidden: 8}}
methods: [{name: ce}]
train: {epochs: 1, batch_size: 10, progress: false}
""")
    if mode is not None:
        raw["data"]["integer_labels"] = mode
    if teacher is not None:
        raw["teacher"] = teacher
        raw["methods"] = [{"name": "kd"}]
    return parse_config(raw, base_dir=tmp_path)


def test_vectors_labels_from_one_and_the_teacher(tmp_path):
    with pytest.raises(ConfigError, match=rf"data\.train: .*train\.npz: integer labels.*\(1\.\.3\) start at 1"
                                          rf".*4 outputs.*{HINT}"):
        build_experiment(vector_config(tmp_path, None), tmp_path / "run")
    exp = build_experiment(vector_config(tmp_path, "names"), tmp_path / "run")
    assert exp.loaded.num_outputs == 3 and exp.train_data.tensors[1].tolist()[:4] == [0, 1, 2, 0]
    assert exp.eval_data.tensors[1].tolist()[:3] == [0, 1, 2]
    # a teacher trained with the empty class 0 (4 outputs) does not fit the 3 classes of ``names`` ...
    from safetensors.torch import save_file

    from distill.tasks.vectors.models import VECTOR_MODELS

    old = VECTOR_MODELS["mlp"](4, 4, hidden=8)
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(tmp_path / "teacher.safetensors"))
    teacher = {"arch": "mlp", "weights": "teacher.safetensors", "options": {"hidden": 8}}
    with pytest.raises(ConfigError, match=r"teacher\.weights: .*shape mismatch .*\(4, 8\) vs \(3, 8\)"):
        build_experiment(vector_config(tmp_path, "names", teacher), tmp_path / "t1")
    with pytest.raises(ConfigError, match=r"teacher\.num_classes: 4, but the data has 3"):
        build_experiment(vector_config(tmp_path, "names", {**teacher, "num_classes": 4}), tmp_path / "t2")
    # ... and fits ``indices``, which keeps the values (and the empty class) as they are
    exp = build_experiment(vector_config(tmp_path, "indices", teacher), tmp_path / "t3")
    assert exp.loaded.num_outputs == 4
    with torch.no_grad():
        assert exp.teacher(exp.task.prepare(exp.task.fetch(exp.train_data, torch.arange(2)), train=False,
                                            generator=None), exp.task, ()).logits.shape == (2, 4)


def test_vectors_eval_label_the_training_file_lacks_is_refused(tmp_path):
    cfg = vector_config(tmp_path, None)
    y = np.arange(30) % 3  # 0..2 in training
    x = np.load(tmp_path / "train.npz")["x"]
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:4], y=np.array([0, 1, 2, 3]))  # before: a 4th output never trained
    with pytest.raises(ConfigError, match=r"data\.eval: .*test\.npz: label 3 \(row 3, counting from 0\) is not among "
                                          r"the 3 training classes"):
        build_experiment(cfg, tmp_path / "run")
