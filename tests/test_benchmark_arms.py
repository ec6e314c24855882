"""Every recipe of the CIFAR benchmark (configs/cifar10*/) trains for a few steps through the config path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from distill.config import load_raw
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
RESNET20 = BENCH.recipes(BENCH.PAIRS["resnet20"])
MOBILENET = BENCH.recipes(BENCH.PAIRS["mobilenetv2"])
#: arms with taps or heads that depend on the student's architecture
HETEROGENEOUS_ARMS = ["ab", "at", "fitnet", "reviewkd", "dho"]


def demo_overrides(path: Path, out: Path, student: str | None = None) -> list[str]:
    """The recipe on the shipped demo images, 3 steps; a two-member ensemble of the shipped teacher stands in for
    MEAL V2's four pretrained ResNets (``--set`` replaces the list), and the extra splits shrink to what the demo
    holds (the demo has 50 train images per class)."""
    raw = load_raw(path)
    out_sets = [f"output_dir={out}", f"data.train={DEMO}", f"data.eval={DEMO}", "data.train_per_class=2",
                "data.eval_per_class=1", "data.cache_dir=null", "train.epochs=3", "train.milestones=[2]",
                "train.batch_size=10", "train.max_steps=3", "train.eval_every=3", "train.log_every=1"]
    out_sets += [f"data.{k}=1" for k in ("extra_val_per_class", "extra_unlabeled_per_class") if raw["data"].get(k)]
    if raw["teacher"].get("ensemble"):
        member = f"{{arch: resnet56, weights: '{TEACHER}'}}"
        out_sets.append(f"teacher.ensemble=[{member}, {member}]")
    if student:
        out_sets.append(f"student.arch={student}")
    return out_sets


def train_three_steps(path: Path, out: Path, student: str | None = None) -> None:
    _, cfg = BENCH.load_recipe(path, demo_overrides(path, out, student))
    exp = build_experiment(cfg)
    summary = exp.fit()
    assert summary["steps"] == 3
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1


@pytest.mark.parametrize("arm", sorted(RESNET20))
def test_arm_trains(arm, tmp_path):
    train_three_steps(RESNET20[arm], tmp_path / arm)


@pytest.mark.parametrize("student", ["mobilenetv2", "shufflenetv2"])
@pytest.mark.parametrize("arm", HETEROGENEOUS_ARMS)
def test_feature_arms_train_on_heterogeneous_students(arm, student, tmp_path):
    """The MobileNetV2 recipes, and (student swapped by ``--set``) ShuffleNetV2, which has no pre-ReLU taps either."""
    train_three_steps(MOBILENET[arm], tmp_path / arm, student if student != "mobilenetv2" else None)


def test_ab_taps_follow_the_student():
    resnet = load_raw(RESNET20["ab"])["methods"][1]
    mobile = load_raw(MOBILENET["ab"])["methods"][1]
    assert resnet["student"] == ["f1_pre", "f2_pre", "f3_pre"]
    assert mobile["student"] == ["f1", "f2", "f3"]
    assert resnet["teacher"] == mobile["teacher"] == ["f1_pre", "f2_pre", "f3_pre"]


def test_fsp_is_inapplicable_only_when_channels_differ():
    assert BENCH.inapplicable_arms("resnet20") == {}
    skipped = BENCH.inapplicable_arms("mobilenetv2")
    assert list(skipped) == ["fsp"] and "equal channels" in skipped["fsp"]
    assert "fsp" in RESNET20 and "fsp" not in MOBILENET


def test_sweep_overrides_scale_the_schedule_and_the_extra_images():
    raw = load_raw(RESNET20["dho"])
    assert BENCH.schedule_overrides(raw, 15) == [] and BENCH.subset_overrides(raw, 500) == []
    assert BENCH.subset_overrides(raw, 20) == ["data.train_per_class=20", "data.extra_val_per_class=2",
                                               "data.extra_unlabeled_per_class=20"]
    assert BENCH.extra_per_class(raw, 8) == (1, 8)
    dkd = load_raw(RESNET20["dkd"])
    assert BENCH.schedule_overrides(dkd, 2) == ["train.epochs=2", "train.milestones=[1, 2]", "train.eval_every=1",
                                                "methods.1.warmup=1"]


def test_sst2_records_of_two_students_keep_their_own_keys():
    """The first SST-2 records name the student apart from the arm (``{"student": "textcnn", "arm": "kd"}``); keyed
    by (arm, seed) as they were, two students' runs of one arm and seed collapsed into one when a later run merged
    the file. ``stem_arm`` names them by recipe stem, so every run keeps its own key."""
    spec = importlib.util.spec_from_file_location("sst2_bench", REPO / "benchmarks" / "sst2.py")
    sst2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sst2)
    old = [{"student": s, "arm": "scratch", "seed": 0, "accuracy": a} for s, a in (("textcnn", 0.8), ("bilstm", 0.7))]
    new = [{"student": "bilstm", "arm": "bilstm_scratch_aug", "seed": 0, "accuracy": 0.9}]
    keyed = {(r["arm"], r["seed"]): r for r in map(sst2.stem_arm, old + new)}
    assert set(keyed) == {("textcnn_scratch", 0), ("bilstm_scratch", 0), ("bilstm_scratch_aug", 0)}
    assert keyed[("textcnn_scratch", 0)]["accuracy"] == 0.8 and keyed[("bilstm_scratch", 0)]["variant"] == "scratch"
    assert sst2.stem_arm(new[0]) is new[0]
