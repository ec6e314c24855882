"""The teacher accuracy a benchmark table prints is measured on the evaluation set the table uses: MEAL V2's
ensemble accuracy, kept between runs, is measured again when the evaluation set (or a member) changes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from helpers import TinyCNN, demo_subset

from distill.core.teachers import EnsembleTeacher
from distill.tasks.image.task import ImageClassification

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("cifar10_kd_acc", REPO / "benchmarks" / "cifar10_kd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ensemble_accuracy_is_remeasured_on_another_evaluation_set(tmp_path):
    bench = load_bench()
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
