"""Every arm of the CIFAR benchmark trains for a few steps through the config path, on both student kinds."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from distill.config import parse_config
from distill.data.images import UNLABELED, load_images
from distill.experiment import build_experiment

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")
TEACHER = "builtin:resnet56_cifar10_jpeg.safetensors"


def load_bench():
    spec = importlib.util.spec_from_file_location("cifar10_kd", REPO / "benchmarks" / "cifar10_kd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = load_bench()
ARMS = BENCH.arms(3)
#: arms with taps or heads that depend on the student's architecture
HETEROGENEOUS_ARMS = ["ab", "at", "fitnet", "reviewkd", "dho"]


def arm_config(arm: str, student: str, out: Path) -> dict:
    """The benchmark's arm on the shipped demo images; the library's own val split stands in for the benchmark's
    held-out images, and a two-member ensemble of the shipped teacher for MEAL V2's four pretrained ResNets."""
    proto = BENCH.PROTOCOLS.get(arm, {})
    teacher = {"arch": "resnet56", "weights": TEACHER}
    if proto.get("teacher") == "ensemble":
        teacher = {"ensemble": [{"arch": "resnet56", "weights": TEACHER}] * 2, "reduce": "probs"}
    return {
        "output_dir": str(out),
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 1,
                 **({"val_per_class": 1} if proto.get("val_fraction") else {})},
        "student": {"arch": student},
        "teacher": teacher,
        "methods": BENCH.arms(3, student)[arm],
        "train": {"epochs": 3, "batch_size": 10, "max_steps": 3, "progress": False, "eval_every": 3,
                  "log_every": 1},
    }


def train_three_steps(arm: str, student: str, out: Path) -> None:
    exp = build_experiment(parse_config(arm_config(arm, student, out)))
    summary = exp.fit()
    assert summary["steps"] == 3
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_arm_trains(arm, tmp_path):
    train_three_steps(arm, "resnet20", tmp_path / arm)


@pytest.mark.parametrize("student", ["mobilenetv2", "shufflenetv2"])
@pytest.mark.parametrize("arm", HETEROGENEOUS_ARMS)
def test_feature_arms_train_on_heterogeneous_students(arm, student, tmp_path):
    train_three_steps(arm, student, tmp_path / arm)


def test_ab_taps_follow_the_student():
    resnet = BENCH.arms(3, "resnet20")["ab"][1]
    mobile = BENCH.arms(3, "mobilenetv2")["ab"][1]
    assert resnet["student"] == ["f1_pre", "f2_pre", "f3_pre"]
    assert mobile["student"] == ["f1", "f2", "f3"]
    assert resnet["teacher"] == mobile["teacher"] == ["f1_pre", "f2_pre", "f3_pre"]


def test_fsp_is_inapplicable_only_when_channels_differ():
    assert BENCH.inapplicable_arms("resnet20") == {}
    skipped = BENCH.inapplicable_arms("mobilenetv2")
    assert list(skipped) == ["fsp"] and "equal channels" in skipped["fsp"]


def test_held_out_images_come_from_outside_the_training_subset(tmp_path):
    args = argparse.Namespace(data=Path(DEMO), work=tmp_path)
    per_class = 20
    full = load_images(DEMO, split="train")
    train = full.balanced_subset(per_class, 0)
    extended, val = BENCH.held_out_data(args, train, per_class, "dho")
    n_val, n_unl = BENCH.extra_per_class("dho", per_class)
    assert (n_val, n_unl) == (2, 20)
    # the shared labelled subset is kept first and unchanged; the added rows are unlabelled
    assert torch.equal(extended.images[: len(train)], train.images)
    assert torch.equal(extended.labels[: len(train)], train.labels)
    assert len(extended) == len(train) + 10 * n_unl
    assert bool((extended.labels[len(train):] == UNLABELED).all())
    assert len(val) == 10 * n_val and torch.equal(val.labels.bincount(), torch.full((10,), n_val))
    # no image is in two of: training subset, unlabelled rows, validation split
    rows = [bytes(x.numpy()) for x in torch.cat([extended.images, val.images])]
    assert len(set(rows)) == len(rows)
    same, none = BENCH.held_out_data(args, train, per_class, "kd")
    assert same is train and none is None
