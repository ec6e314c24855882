"""The teacher accuracy a benchmark table prints is measured on the evaluation set the table uses: MEAL V2's
ensemble accuracy, kept between runs, is measured again when the evaluation set (or a member) changes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from helpers import TinyCNN, demo_subset, load_benchmark

from distill.core.teachers import EnsembleTeacher
from distill.tasks.image.task import ImageClassification

REPO = Path(__file__).resolve().parents[1]


def load():
    return load_benchmark("cifar10_kd")


def test_ensemble_accuracy_is_remeasured_on_another_evaluation_set(tmp_path):
    bench = load()
    torch.manual_seed(0)
    teacher = EnsembleTeacher([TinyCNN(), TinyCNN()], reduce="probs")
    members = [SimpleNamespace(arch="a"), SimpleNamespace(arch="b")]
    config = SimpleNamespace(teacher=SimpleNamespace(members=lambda: members))
    task = ImageClassification((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), None)
    args = SimpleNamespace(work=tmp_path)
    small = SimpleNamespace(teacher=teacher, config=config, task=task, eval_data=demo_subset("test", 1))
    first = bench.ensemble_recipe(args, small)
    assert first["test_images"] == 10
    assert bench.ensemble_recipe(args, small) == first  # the same set: read back
    big = SimpleNamespace(teacher=teacher, config=config, task=task, eval_data=demo_subset("test", 5))
    second = bench.ensemble_recipe(args, big)
    assert second["test_images"] == 50 and second["eval_fingerprint"] != first["eval_fingerprint"]
    assert json.loads((tmp_path / "ensemble.json").read_text())["test_images"] == 50
    # an old file without fingerprints (the 10-image measurement of earlier runs) is never reused
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": {}, "ensemble": 0.8, "test_images": 10}))
    assert bench.ensemble_recipe(args, big)["test_images"] == 50


def test_table_prints_meal_v2_teacher_only_when_measured_on_the_tables_own_test_set(tmp_path):
    bench = load()
    old = {"members": {"resnet20": 0.7}, "ensemble": 0.8, "test_images": 10}  # the earlier runs' record
    rows = [{"arm": "mealv2", "seed": 0, "teacher_accuracy": old}]
    data = "../shared/data/cifar10-jpeg.tar.gz"
    line = bench.mealv2_teacher_line(rows, 10000, data, tmp_path)
    assert "not yet measured" in line and "80.00" not in line and "10 images" in line
    # a measurement on another archive's test split of the same size does not count
    other = {"members": {"resnet20": 0.5}, "ensemble": 0.6, "test_images": 10000, "data": "elsewhere/cifar.tar.gz"}
    (tmp_path / "mealv2_teacher_other.json").write_text(json.dumps(other))
    assert "not yet measured" in bench.mealv2_teacher_line(rows, 10000, data, tmp_path)
    right = {"members": {"resnet20": 0.826}, "ensemble": 0.8914, "test_images": 10000, "data": data}
    (tmp_path / "mealv2_teacher_10k.json").write_text(json.dumps(right))
    line = bench.mealv2_teacher_line(rows, 10000, data, tmp_path)
    assert "89.14%" in line and "10,000" in line and "mealv2_teacher_10k.json" in line and "80.00" not in line
    # a measurement of other members (the catalogue's four ResNets for a three-ResNet table) does not count
    three = [{"arm": "mealv2_finetune", "seed": 0, "teacher_accuracy": {"members": {"resnet32": 0.8, "resnet44": 0.8,
                                                                                      "resnet56": 0.8},
                                                                          "ensemble": 0.84, "test_images": 10}}]
    assert "not yet measured" in bench.mealv2_teacher_line(three, 10000, data, tmp_path)
    # a run that measured on the table's own set is used as it is
    rows.append({"arm": "mealv2", "seed": 1, "teacher_accuracy": right | {"ensemble": 0.8915}})
    assert "89.15%" in bench.mealv2_teacher_line(rows, 10000, data, tmp_path)
