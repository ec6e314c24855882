"""Every arm of the CIFAR benchmark trains for a few steps through the config path, on both student kinds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from distill.config import parse_config
from distill.experiment import build_experiment

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def load_bench():
    spec = importlib.util.spec_from_file_location("cifar10_kd", REPO / "benchmarks" / "cifar10_kd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARMS = load_bench().arms(3)


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_arm_trains(arm, tmp_path):
    raw = {
        "output_dir": str(tmp_path / arm),
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 1},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet56", "weights": "builtin:resnet56_cifar10_jpeg.safetensors"},
        "methods": ARMS[arm],
        "train": {"epochs": 3, "batch_size": 10, "max_steps": 3, "progress": False, "eval_every": 3,
                  "log_every": 1},
    }
    exp = build_experiment(parse_config(raw))
    summary = exp.fit()
    assert summary["steps"] == 3
    rows = (tmp_path / arm / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1
