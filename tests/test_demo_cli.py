"""The demo and the eval command, end to end on the shipped data (a few seconds with a tiny budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from distill.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "src" / "distill" / "assets"


@pytest.mark.skipif(not (ASSETS / "resnet56_cifar10_jpeg.safetensors").exists(), reason="teacher not shipped yet")
def test_demo_smoke_and_eval(tmp_path, capsys):
    from distill.demo import run_demo

    results = run_demo(tmp_path / "demo", epochs=1, per_class=6, progress=False)
    assert set(results) >= {"teacher", "scratch", "distilled", "total_wall_time_s"}
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["distilled"]["accuracy"] == results["distilled"]["accuracy"]
    # the teacher really is the pretrained, fine-tuned ResNet-56: far above chance even on 60 images
    assert results["teacher"]["accuracy"] > 0.6
    # the YAML the demo wrote is a valid experiment that `distill eval` accepts
    cfg = tmp_path / "demo" / "distilled.yaml"
    capsys.readouterr()
    assert main(["eval", str(cfg)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student"]["accuracy"] == pytest.approx(results["distilled"]["accuracy"])
    assert out["teacher"]["accuracy"] == pytest.approx(results["teacher"]["accuracy"])


def test_eval_reports_student_and_teacher(tmp_path, capsys):
    demo = str(ASSETS / "cifar10_demo.tar.gz")
    raw = {"output_dir": str(tmp_path / "run"),
           "data": {"train": demo, "eval": demo, "train_per_class": 2, "eval_per_class": 3},
           "student": {"arch": "resnet20"}, "teacher": {"arch": "resnet20", "weights": "random"},
           "methods": [{"name": "kd"}], "train": {"epochs": 1, "batch_size": 10, "progress": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    capsys.readouterr()
    assert main(["eval", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"student", "teacher"} and 0.0 <= out["student"]["accuracy"] <= 1.0


def test_eval_uses_a_methods_inference_wrapper(tmp_path, capsys):
    """DHO evaluates through its combined heads; `distill eval` must rebuild that from methods.safetensors."""
    demo = str(ASSETS / "cifar10_demo.tar.gz")
    raw = {"output_dir": str(tmp_path / "run"),
           "data": {"train": demo, "eval": demo, "train_per_class": 4, "eval_per_class": 3, "val_per_class": 1},
           "student": {"arch": "resnet20"}, "teacher": {"arch": "resnet20", "weights": "random"},
           "methods": [{"name": "dho", "temperature": 2.0}],
           "train": {"epochs": 1, "batch_size": 10, "progress": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final"]
    assert (tmp_path / "run" / "methods.safetensors").exists()
    assert main(["eval", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student"] == pytest.approx(trained)
