"""Every YAML file under configs/ validates; the CIFAR recipes are, setting for setting, what the benchmark ran
before its arms became files; ``base:`` chains and the extra data splits behave; a recipe trains end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.config import ConfigError, load_config, load_raw, parse_config
from distill.data.images import UNLABELED, load_images
from distill.experiment import build_experiment, resolve_path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEMO = REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz"
YAMLS = sorted(p for p in CONFIGS.rglob("*.y*ml") if not p.name.startswith("_"))
PAIRS = {"resnet20": CONFIGS / "cifar10", "mobilenetv2": CONFIGS / "cifar10_mobilenetv2"}

# -- today's benchmark, frozen --------------------------------------------------------------------------------
#: ``arms(15, student)`` of benchmarks/cifar10_kd.py as of commit 9533be0 (before the arms became files)
_CE = {"name": "ce", "weight": 1.0}
FROZEN_METHODS = {
    "scratch": [_CE],
    "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}],
    "fitnet": [_CE, {"name": "fitnet", "weight": 100.0, "student": "f2", "teacher": "f2"}],
    "at": [_CE, {"name": "at", "weight": 1000.0, "student": ["f1", "f2", "f3"]}],
    "sp": [_CE, {"name": "sp", "weight": 3000.0, "student": ["f3"]}],
    "cc": [_CE, {"name": "cc", "weight": 0.02, "variant": "repdistiller"}],
    "vid": [_CE, {"name": "vid", "weight": 1.0, "student": ["f1", "f2", "f3"]}],
    "rkd": [_CE, {"name": "rkd", "weight": 1.0}],
    "pkt": [_CE, {"name": "pkt", "weight": 30000.0}],
    "ab": [_CE, {"name": "ab", "weight": 1.0, "init_epochs": 2, "student": "STUDENT_AB_TAPS",
                 "teacher": ["f1_pre", "f2_pre", "f3_pre"]}],
    "ft": [_CE, {"name": "ft", "weight": 500.0, "init_epochs": 2}],
    "fsp": [_CE, {"name": "fsp", "weight": 50.0, "init_epochs": 2}],
    "nst": [_CE, {"name": "nst", "weight": 50.0}],
    "crd": [_CE, {"name": "crd", "weight": 0.8, "num_negatives": 4096, "negatives": "other_classes"}],
    "dkd": [_CE, {"name": "dkd", "alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup": 5}],
    "dist": [_CE, {"name": "dist", "weight": 2.0, "tau": 4.0}],
    "lskd": [{"name": "lskd", "temperature": 2.0, "kl_weight": 9.0, "ce_weight": 0.1}],
    "reviewkd": [_CE, {"name": "reviewkd", "weight": 0.6, "warmup_epochs": 5}],
    "pld": [{"name": "pld", "tau": 1.0}],
    "nd": [{"name": "nd", "nd_weight": 2.0, "ce_weight": 1.0, "kd_weight": 1.0, "temperature": 4.0,
            "warmup_epochs": 5}],
    "mixup": [{"name": "mixup", "strategy": "fmu", "beta": 1.0}, {"name": "ce", "weight": 0.1},
              {"name": "kd", "weight": 0.9, "temperature": 4.0}],
    "mixup_t1": [{"name": "mixup", "strategy": "fmu", "beta": 1.0}, {"name": "ce", "weight": 0.1},
                 {"name": "kd", "weight": 0.9, "temperature": 1.0}],
    "mixstd": [{"name": "mixstd", "ce_weight": 0.1, "kl_weight": 0.9}],
    "mixkd": [{"name": "mixkd", "strategy": "pmu", "partmixup": 0.9, "pmu_sampling": "with_replacement",
               "beta": 1.0, "ce_weight": 0.1, "kl_weight": 0.9}],
    "tgeo": [{"name": "tgeo", "temperature": 4.0, "hidden": 64, "meta_lr": 1e-3, "inner_lr": 0.05,
              "update_every": 1}],
    "dho": [{"name": "dho", "temperature": 2.0, "ce_weight": 0.5, "kd_weight": 0.5, "kd_reduction": "split",
             "student": "pooled"}],
    "lelp": [{"name": "lelp", "subclasses": 4, "beta": 1.0, "targets": "cached", "assign": "labels",
              "ce_weight": 0.0}],
    "mealv2": [{"name": "mealv2", "discriminator": True, "mode": "joint", "discriminator_input": "mean_logits"}],
}
AB_TAPS = {"resnet20": ["f1_pre", "f2_pre", "f3_pre"], "mobilenetv2": ["f1", "f2", "f3"]}
#: (validation, unlabelled) images per class from outside the subset (PROTOCOLS at --per-class 500)
FROZEN_EXTRA = {"tgeo": (50, 0), "dho": (50, 500)}
FROZEN_ENSEMBLE = ["resnet20-12fca82f.th", "resnet32-d509ac18.th", "resnet44-014dd654.th", "resnet56-4bfd9763.th"]
INAPPLICABLE = {"mobilenetv2": {"fsp"}}


def frozen_config(arm: str, student: str) -> dict:
    """``arm_experiment``'s config at the benchmark's defaults (epochs 15, --per-class 500, the shipped teacher);
    paths as they resolve, output and cache folders left to the sweep."""
    methods = json.loads(json.dumps(FROZEN_METHODS[arm]).replace('"STUDENT_AB_TAPS"', json.dumps(AB_TAPS[student])))
    teacher = {"arch": "resnet56", "weights": "builtin:resnet56_cifar10_jpeg.safetensors"}
    if arm == "mealv2":
        teacher = {"ensemble": [{"arch": f.split("-")[0], "weights": f"SHARED/models/resnet-cifar10/{f}"}
                                for f in FROZEN_ENSEMBLE], "reduce": "probs"}
    n_val, n_unl = FROZEN_EXTRA.get(arm, (0, 0))
    data = {"train": "SHARED/data/cifar10-jpeg.tar.gz", "eval": "SHARED/data/cifar10-jpeg.tar.gz",
            "normalize": "imagenet", "augment": {"crop_padding": 4, "flip": True}, "train_per_class": 500,
            "subset_seed": 0, **({"extra_val_per_class": n_val} if n_val else {}),
            **({"extra_unlabeled_per_class": n_unl} if n_unl else {})}
    return {"seed": 0, "data": data, "student": {"arch": student}, "teacher": teacher, "methods": methods,
            "train": {"epochs": 15, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                      "schedule": "step", "milestones": [9, 12], "eval_every": 3, "log_every": 20,
                      "progress": False}}


def comparable(cfg_dump: dict, base_dir: str | None) -> dict:
    """A config dump with the sweep-owned keys blanked and paths made comparable (``SHARED`` = ../shared)."""
    shared = str((REPO.parent / "shared").resolve())

    def path(value: str) -> str:  # where the file would be, present or not
        if value.startswith("SHARED/") or value.startswith("builtin:"):
            return value
        return str((Path(base_dir or ".") / value).resolve()).replace(shared, "SHARED")

    out = json.loads(json.dumps(cfg_dump))
    out["output_dir"] = out["data"]["cache_dir"] = None
    out["data"]["train"], out["data"]["eval"] = path(out["data"]["train"]), path(out["data"]["eval"])
    for m in out["teacher"]["ensemble"] or []:
        m["weights"] = path(m["weights"])
    return out


# -- every file under configs/ -------------------------------------------------------------------------------
def test_configs_exist():
    assert YAMLS, "no YAML files under configs/"


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CONFIGS)) for p in YAMLS])
def test_every_config_validates(path):
    """Validation needs no data: it parses, and every relative path the file names resolves (the data files
    themselves are checked only where ../shared is present)."""
    cfg = load_config(path)
    assert cfg.methods
    data = [cfg.data.train, cfg.data.eval] if cfg.data else []
    if cfg.teacher is not None:
        data += [m.weights for m in cfg.teacher.members() if m.weights]
    missing = [p for p in data if p and not resolve_path(p, cfg.base_dir).exists()]
    if missing:
        pytest.skip(f"{missing[0]} not present: the ../shared data folder is not beside the repo")


@pytest.mark.parametrize("student", list(PAIRS))
def test_cifar_recipes_equal_what_the_benchmark_ran(student):
    folder = PAIRS[student]
    arms = {p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_")}
    assert arms == set(FROZEN_METHODS) - INAPPLICABLE.get(student, set())
    for arm in sorted(arms):
        cfg = load_config(folder / f"{arm}.yaml")
        want = parse_config(frozen_config(arm, student))
        assert comparable(cfg.model_dump(), cfg.base_dir) == comparable(want.model_dump(), None), arm
        # the record of a run keeps the methods as written: the same dicts as the benchmark's
        assert load_raw(folder / f"{arm}.yaml")["methods"] == frozen_config(arm, student)["methods"], arm


def test_benchmark_catalogue_is_the_files():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cifar10_kd", REPO / "benchmarks" / "cifar10_kd.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.CATALOGUE == list(FROZEN_METHODS)
    for student, folder in PAIRS.items():
        assert list(bench.recipes(folder)) == [a for a in FROZEN_METHODS if a not in INAPPLICABLE.get(student, ())]
        assert bench.recipe_student(folder) == student
    assert set(bench.inapplicable_arms("mobilenetv2")) == {"fsp"} and bench.inapplicable_arms("resnet20") == {}


# -- base: chains --------------------------------------------------------------------------------------------
BASE = {"data": {"train": "x.tar.gz", "train_per_class": 5}, "student": {"arch": "resnet20"},
        "methods": [{"name": "ce"}], "train": {"epochs": 3, "lr": 0.1}}


def write(path: Path, obj: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj))
    return path


def test_base_is_deep_merged_and_overrides_apply_last(tmp_path):
    write(tmp_path / "_base.yaml", BASE)
    child = write(tmp_path / "sub" / "kd.yaml", {"base": "../_base.yaml", "train": {"epochs": 5},
                                                  "data": {"augment": None}})
    cfg = load_config(child, ["train.lr=0.2"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.train_per_class) == (5, 0.2, 5)
    assert cfg.data.augment is None  # null sets the key, it does not fall back to the base
    assert cfg.base_dir == str(child.parent)  # paths resolve next to the file that was loaded
    grand = write(tmp_path / "sub" / "grand.yaml", {"base": "kd.yaml", "methods": [{"name": "ce", "weight": 0.5}]})
    cfg = load_config(grand)
    assert cfg.train.epochs == 5 and [m.weight for m in cfg.methods] == [0.5]  # lists replace


def test_base_cycle_and_missing_base_are_one_line_errors(tmp_path):
    write(tmp_path / "a.yaml", {**BASE, "base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"base: 'a.yaml' makes a cycle \(a.yaml -> b.yaml -> a.yaml\)") as e:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(e.value)
    write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")
    write(tmp_path / "c.yaml", {**BASE, "base": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"c.yaml: base: .*nope.yaml: no such file") as e:
        load_config(tmp_path / "c.yaml")
    assert "\n" not in str(e.value)
    for bad in ("/etc/passwd.yaml", "x.py", 3):
        write(tmp_path / "d.yaml", {**BASE, "base": bad})
        with pytest.raises(ConfigError, match="base: a relative path to another .yaml file"):
            load_config(tmp_path / "d.yaml")


# -- data.extra_*_per_class ----------------------------------------------------------------------------------
def test_extra_splits_come_from_outside_the_training_subset(tmp_path):
    per_class = 20
    raw = {"output_dir": str(tmp_path), "data": {"train": str(DEMO), "train_per_class": per_class,
                                                  "extra_val_per_class": 2, "extra_unlabeled_per_class": 20},
           "student": {"arch": "resnet20"}, "teacher": {"arch": "resnet56", "weights": "random"},
           "methods": [{"name": "ce"}]}
    exp = build_experiment(parse_config(raw))
    train = load_images(DEMO, split="train").balanced_subset(per_class, 0)
    extended, val = exp.train_data, exp.val_data
    # the shared labelled subset is kept first and unchanged; the added rows are unlabelled
    assert torch.equal(extended.images[: len(train)], train.images)
    assert torch.equal(extended.labels[: len(train)], train.labels)
    assert len(extended) == len(train) + 10 * 20
    assert bool((extended.labels[len(train):] == UNLABELED).all())
    assert len(val) == 10 * 2 and torch.equal(val.labels.bincount(), torch.full((10,), 2))
    rows = [bytes(x.numpy()) for x in torch.cat([extended.images, val.images])]
    assert len(set(rows)) == len(rows)  # no image in two of: subset, unlabelled rows, validation split


def test_extra_splits_need_a_subset_and_one_validation_split():
    raw = {"data": {"train": "x", "extra_val_per_class": 2}, "student": {"arch": "resnet20"},
           "methods": [{"name": "ce"}]}
    with pytest.raises(ConfigError, match="data.extra_val_per_class: .*set data.train_per_class"):
        parse_config(raw)
    raw["data"].update(train_per_class=5, val_per_class=1)
    with pytest.raises(ConfigError, match="give one validation split"):
        parse_config(raw)


# -- one recipe, end to end ----------------------------------------------------------------------------------
def test_a_recipe_trains_two_steps_through_distill_train(tmp_path):
    demo = "builtin:cifar10_demo.tar.gz"
    cmd = [sys.executable, "-m", "distill", "train", str(CONFIGS / "cifar10" / "kd.yaml"),
           "--set", f"data.train={demo}", "--set", f"data.eval={demo}", "--set", "data.train_per_class=2",
           "--set", "data.eval_per_class=1", "--set", "data.cache_dir=null", "--set", f"output_dir={tmp_path}",
           "--set", "train.max_steps=2", "--set", "train.batch_size=10", "--set", "train.epochs=1",
           "--set", "train.milestones=[1]"]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"] == str(tmp_path)
    assert (tmp_path / "metrics.csv").exists()
