"""Benchmark: fine-tune the pretrained ResNet-56 on JPEG CIFAR-10, then distil it into a ResNet-20.

    python benchmarks/cifar10_kd.py                      # full run (writes benchmarks/results/cifar10_kd.*)
    python benchmarks/cifar10_kd.py --quick              # a few minutes, for CI (writes to a temp folder)
    python benchmarks/cifar10_kd.py --arms all --name cifar10_catalogue \
        --teacher src/distill/assets/resnet56_cifar10_jpeg.safetensors   # the whole classification catalogue
    ... --student mobilenetv2                             # the heterogeneous pair, same arms, seeds and schedule

Every arm is a recipe file: ``configs/cifar10/<arm>.yaml`` (ResNet-20 student) or
``configs/cifar10_mobilenetv2/<arm>.yaml`` (MobileNetV2, width 0.5), each a complete ``distill train`` experiment
(``--configs DIR`` runs another folder of recipes). The benchmark runs them through :mod:`sweep` with only its own
``--set`` overrides: seed, run folder, decoded-image cache, the teacher it fine-tuned or was given (``--teacher``),
``--data``/``--shared`` when they differ from the recipe's paths, and when asked, ``--epochs`` (milestones at
60%/80%, evaluation every fifth of the run, method warm-ups a third of it; initialisation stages stay 2 epochs)
and ``--per-class`` (the extra validation/unlabelled images scale with it). ``--arms all`` is every recipe of the
folder, in the catalogue order (``CATALOGUE``); by default scratch (CE), KD, FitNet and AT.

Arms whose protocol differs (their recipes say how; the table's note column says so):

- ``tgeo``: its bilevel solver needs a validation split: 50 labelled images per class held out from the rest of
  the train split (``data.extra_val_per_class``; outside the 5,000 training images, which stay the same as every
  other arm's).
- ``dho``: semi-supervised: the same 5,000 labelled images plus 500 per class from the rest of the train split
  with their labels hidden (``data.extra_unlabeled_per_class``; an epoch has twice the steps), and 50 per class
  held out for its head combiner.
- ``mealv2``: the teacher is the ensemble of the four pretrained akamaster ResNets (20/32/44/56, not fine-tuned
  on the JPEGs) averaged in probability space; no hard labels. Its accuracy is measured and printed above the
  table.
- ``lelp`` is a few-class method (the paper's vision setting is binarised CIFAR); on CIFAR-10 it runs as
  specified (10 classes x 4 pseudo-subclasses, alpha = 0), which is not the regime it was designed for.

Heterogeneous pair (``--student mobilenetv2``): every arm runs except FSP, which needs equal channel counts at its
layer pairs: it has no recipe there and is reported as not applicable (``inapplicable_arms``). MobileNetV2
(width 0.5) is the cheaper student: a from-scratch step costs about half of ResNet-20's. ReviewKD is the expensive
arm there: its fusion width follows the official rule min(512, channels of the student's last feature), 512
(64 for ResNet-20), so its step costs about 2.5x ResNet-20's ReviewKD step.

Not an arm: ``makd`` (multi-aspect KD) needs per-image aspect targets from a multimodal LLM, which no offline
teacher here can give; class-level aspects would be an auxiliary-label ablation, not MaKD (its spec's SST-2
analogue is where it is demonstrated).

Results are appended to the JSON as each run finishes, so an interrupted benchmark
resumes where it stopped. ``--only ARM ...`` trains a part of ``--arms``, so that a catalogue can be split over
processes that share one results file (each write re-reads the file under a lock and merges).
Data: ../shared/data/cifar10-jpeg.tar.gz (or --data: any CIFAR-10 in a format
``distill.data.load_images`` reads).
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.config import load_raw, parse_config, set_override
from distill.core.taps import FeatureTaps
from distill.experiment import Experiment, build_experiment, evaluate_model, resolve_path
from distill.models import build_model
from distill.report.plots import plot_gains, plot_runs
from distill.train.checkpoint import save_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import (  # noqa: E402
    Sweep,
    discover_arms,
    format_diff,
    format_mean,
    load_recipe,
    previous_runs,
    summarise,
)
from verdicts import cifar_verdicts, counts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "distill" / "assets"
CONFIGS = REPO / "configs"

#: the catalogue order of the arms (tables, ``--arms all``); a recipe folder holds the applicable ones
CATALOGUE = ["scratch", "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "dkd",
             "dist", "lskd", "reviewkd", "pld", "nd", "mixup", "mixup_t1", "mixstd", "mixkd", "tgeo", "dho",
             "dho_single_head", "lelp", "mealv2"]
#: student -> its recipe folder (the ResNet-56 teacher's pairs)
PAIRS = {"resnet20": CONFIGS / "cifar10", "mobilenetv2": CONFIGS / "cifar10_mobilenetv2"}
ISSUE2_ARMS = ["scratch", "kd", "fitnet", "at"]

#: the table's note for arms whose protocol differs; {val} / {unl}: the extra images per class of the run
NOTES = {
    "tgeo": "+{val}/class held-out validation images for the bilevel update",
    "dho": "+{unl}/class unlabelled images (more steps per epoch), +{val}/class validation images for the head "
           "combiner",
    "mealv2": "teacher: the 4 pretrained ResNets (20/32/44/56), mean probabilities; no labels; shared schedule "
              "(official: weight decay 0, pretrained student)",
    "lelp": "few-class method (paper: binarised CIFAR); here 10 classes x 4 pseudo-subclasses",
    "ce_finetune_pretrained": "labels only, weight decay 5e-4; no teacher",
    "kd_finetune_r56": "KD from the published ResNet-56 alone (CE 0.1 + KD 0.9, T 4), weight decay 5e-4",
    "mealv2_finetune": "teacher: ResNet-32/44/56 as published, mean probabilities; no labels; discriminator",
    "mealv2_finetune_nod": "as mealv2_finetune without the discriminator (the spec's ablation)",
    "dho_single_head": "control of dho: its loss on the student's own head; same +{unl}/class unlabelled and "
                       "+{val}/class validation images",
    **{f"kd_alpha0{a}": f"fixed alpha 0.{a} (CE {1 - a / 10:g}, KD {a / 10:g} at T 4)" for a in (3, 5, 7, 9)},
}


def feature_channels(arch: str, names: list[str]) -> dict[str, int]:
    """Channels of the named features of ``arch`` on one 32x32 image."""
    model = build_model(arch, num_classes=10).eval()
    with torch.no_grad(), FeatureTaps(model, names).capture() as feats:
        model(torch.zeros(1, 3, 32, 32))
    return {name: int(f.shape[1]) for name, f in feats.items()}


def inapplicable_arms(student: str, teacher: str = "resnet56") -> dict[str, str]:
    """Arms that cannot run on this pair, with the reason: FSP matches Gram matrices between layer pairs, so
    each pair needs the same channel counts in both networks (the CRD paper's cross-architecture table leaves
    FSP out for that reason)."""
    names = ["f0", "f1", "f2", "f3"]
    cs, ct = feature_channels(student, names), feature_channels(teacher, names)
    if cs != ct:
        return {"fsp": f"FSP needs equal channels at f0..f3; {student} has {[cs[n] for n in names]}, "
                       f"{teacher} {[ct[n] for n in names]}"}
    return {}


def recipes(folder: Path) -> dict[str, Path]:
    """``{arm: recipe file}`` of a pair's folder, in catalogue order."""
    return discover_arms(folder, CATALOGUE)


def recipe_student(folder: Path) -> str:
    """The student architecture of a folder's recipes (they share it)."""
    return str(load_raw(next(iter(recipes(folder).values())))["student"]["arch"])


def schedule_overrides(raw: dict[str, Any], epochs: int) -> list[str]:
    """The recipe's schedule scaled to ``epochs`` as the catalogue scales it: milestones at 60%/80%, evaluation
    every fifth of the run, method warm-ups (``warmup``, ``warmup_epochs``) a third; initialisation stages stay."""
    if epochs == raw["train"]["epochs"]:
        return []
    warm = max(1, epochs // 3)
    out = [f"train.epochs={epochs}", f"train.milestones=[{round(0.6 * epochs)}, {round(0.8 * epochs)}]",
           f"train.eval_every={max(1, epochs // 5)}"]
    for i, m in enumerate(raw["methods"]):
        out += [f"methods.{i}.{key}={warm}" for key in ("warmup", "warmup_epochs") if key in m]
    return out


def subset_overrides(raw: dict[str, Any], per_class: int) -> list[str]:
    """``per_class`` training images per class; an arm's extra validation/unlabelled images scale with it."""
    d = raw["data"]
    old = d["train_per_class"]
    if per_class == old:
        return []
    out = [f"data.train_per_class={per_class}"]
    for key in ("extra_val_per_class", "extra_unlabeled_per_class"):
        if d.get(key):
            out.append(f"data.{key}={max(1, round(d[key] * per_class / old))}")
    return out


def _path(value: Path | str) -> str:
    return json.dumps(str(value))  # a YAML string, whatever the characters


def run_overrides(args: argparse.Namespace, arm: str, seed: int, teacher: Path | None, run_dir: Path) -> list[str]:
    """The sweep's own ``--set`` assignments for one run of ``arm``."""
    path = args.arms_files[arm]
    raw = load_raw(path)
    out = [f"seed={seed}", f"output_dir={_path(run_dir)}", f"data.cache_dir={_path(args.work / 'cache')}"]
    for key in ("train", "eval"):
        if raw["data"].get(key) and resolve_path(raw["data"][key], str(path.parent)).resolve() != args.data.resolve():
            out.append(f"data.{key}={_path(args.data)}")
    out += subset_overrides(raw, args.per_class) + schedule_overrides(raw, args.epochs)
    if args.quick:
        out.append("data.eval_per_class=50")
    def from_shared(key: str, weights: str) -> None:  # the published ResNets of ../shared: from --shared
        if "resnet-cifar10" not in Path(weights).parts:
            return  # a recipe's own weights file stays where the recipe says
        want = args.shared / "models" / "resnet-cifar10" / Path(weights).name
        if resolve_path(weights, str(path.parent)).resolve() != want.resolve():
            out.append(f"{key}={_path(want)}")

    t = raw.get("teacher") or {}
    members = t.get("ensemble") or []
    for i, m in enumerate(members):  # MEAL V2's pretrained ResNets
        from_shared(f"teacher.ensemble.{i}.weights", m["weights"])
    student_weights = (raw.get("student") or {}).get("weights")
    if student_weights and not str(student_weights).startswith("builtin:"):  # a pretrained student (MEAL V2)
        from_shared("student.weights", student_weights)
    if t and not members:
        if str(t.get("weights", "")).startswith("builtin:"):  # the catalogue's fine-tuned ResNet-56
            if teacher is not None:
                out.append(f"teacher.weights={_path(teacher)}")
        elif t.get("weights"):
            from_shared("teacher.weights", t["weights"])
    return out


def base_recipe(configs: Path) -> dict[str, Any]:
    """A recipe folder's ``_base.yaml`` as raw YAML ({} where the folder has none)."""
    base = configs / "_base.yaml"
    return load_raw(base) if base.exists() else {}


def start_text(base: dict[str, Any]) -> str:
    """How the folder's student starts (from scratch, or from the published weights its ``_base.yaml`` names), and
    what its training set adds (noise images)."""
    weights = (base.get("student") or {}).get("weights")
    noise = (base.get("data") or {}).get("noise_images")
    return (f"from the published weights {Path(weights).name}" if weights else "from scratch") + (
        f" (every arm's training set also holds {noise} Gaussian-noise images with random labels)" if noise else "")


def schedule_text(base: dict[str, Any]) -> str:
    """The shared schedule of a recipe folder (its ``_base.yaml``), as the table states it."""
    if "train" not in base:
        return "SGD lr 0.05 x0.1 at 60%/80%, batch 64, crop+flip"
    tr = base["train"]
    steps = {"step": " x0.1 at 60%/80%", "constant": " constant", "cosine": " cosine"}.get(tr.get("schedule"), "")
    decay = tr.get("weight_decay", 0)
    return f"SGD lr {tr['lr']:g}{steps}, weight decay {decay:g}, batch {tr['batch_size']}, crop+flip"


def run_dir_of(args: argparse.Namespace, arm: str, seed: int) -> Path:
    """A run's folder; a recipe folder other than the pair's catalogue (a protocol table: MEAL V2's, TGeo-KD's)
    prefixes its name, so its runs never resume a catalogue run of the same arm and seed."""
    folder = Path(args.configs).resolve().name
    prefix = "" if folder == PAIRS[args.student].name else f"{folder}-"
    return args.work / "runs" / f"{prefix}{args.student}-e{args.epochs}-n{args.per_class}-{arm}-seed{seed}"


def extra_per_class(raw: dict[str, Any], per_class: int) -> tuple[int, int]:
    """(validation, unlabelled) images per class a recipe adds from outside the training subset, at ``per_class``
    training images per class."""
    scaled = load_recipe_raw(raw, subset_overrides(raw, per_class))["data"]
    return scaled.get("extra_val_per_class") or 0, scaled.get("extra_unlabeled_per_class") or 0


def load_recipe_raw(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for assignment in overrides:
        set_override(out, assignment)
    return out


def arm_note(arm: str, raw: dict[str, Any]) -> str:
    d = raw.get("data", {})
    return NOTES.get(arm, "").format(val=d.get("extra_val_per_class") or 0, unl=d.get("extra_unlabeled_per_class") or 0)


def base_data(args: argparse.Namespace) -> dict[str, Any]:
    return {"train": str(args.data), "eval": str(args.data), "normalize": "imagenet",
            "augment": {"crop_padding": 4, "flip": True}, "cache_dir": str(args.work / "cache")}


def finetune_teacher(args: argparse.Namespace, mixup: bool = False) -> dict[str, Any]:
    """Fine-tune the pretrained ResNet-56 on the JPEG train split (once), report test accuracy before/after.
    ``mixup``: the Mix-T teacher of logit.md row 26 (the same fine-tune on FMU-mixed batches, beta 1). Processes
    that share ``--work`` wait for the one that trains it (a file lock)."""
    out = args.work / ("teacher-mixup" if mixup else "teacher")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "finetune.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _finetune_teacher(args, out, mixup)


def _finetune_teacher(args: argparse.Namespace, out: Path, mixup: bool) -> dict[str, Any]:
    weights = out / "resnet56_cifar10_jpeg.safetensors"
    recipe_path = out / "recipe.json"
    if weights.exists() and recipe_path.exists():
        return json.loads(recipe_path.read_text())
    pretrained = args.shared / "models" / "resnet-cifar10" / "resnet56-4bfd9763.th"
    epochs = 1 if args.quick else args.teacher_epochs
    methods = [{"name": "mixup", "strategy": "fmu", "beta": 1.0}, {"name": "ce"}] if mixup else [{"name": "ce"}]
    raw = {
        "output_dir": str(out / "run"),
        "seed": 0,
        "data": {**base_data(args), **({"train_per_class": 100, "eval_per_class": 50} if args.quick else {})},
        "student": {"arch": "resnet56", "weights": str(pretrained)},
        "methods": methods,
        "train": {"epochs": epochs, "batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "cosine", "eval_every": epochs, "log_every": 20, "checkpoint_every": 100},
    }
    exp = build_experiment(parse_config(raw))
    before = evaluate_model(exp.student, exp.task, exp.eval_data)["accuracy"]
    print(f"teacher before fine-tuning: {100 * before:.2f}% on {len(exp.eval_data)} test images", flush=True)
    summary = exp.fit()
    after = summary["final"]["accuracy"]
    print(f"teacher after fine-tuning: {100 * after:.2f}%", flush=True)
    save_weights(weights, exp.student.state_dict(), metadata={"arch": "resnet56", "num_classes": "10"})
    recipe = {"source": str(pretrained), "data": str(args.data), "test_accuracy_before": before,
              "test_accuracy_after": after, "train": raw["train"], "wall_time_s": summary["wall_time_s"],
              "test_images": len(exp.eval_data), "train_images": len(exp.train_data), "mixup": mixup}
    write_json(recipe_path, recipe)
    return recipe



def ensemble_recipe(args: argparse.Namespace, exp: Experiment) -> dict[str, Any]:
    """Test accuracy of each member of MEAL V2's ensemble and of their mean probabilities, measured on the run's own
    evaluation set. Kept in ``ensemble.json`` keyed by the fingerprints of the members' weights and of that set: a
    file measured on another set (an earlier run's 10 test images) or for other members is measured again."""
    from distill.cache import data_fingerprint, teacher_fingerprint

    path = args.work / "ensemble.json"
    key = {"eval_fingerprint": data_fingerprint(exp.eval_data), "teacher_fingerprint": teacher_fingerprint(exp.teacher)}
    if path.exists():
        stored = json.loads(path.read_text())
        if all(stored.get(k) == v for k, v in key.items()):
            return stored
    members = exp.teacher.members
    archs = [m.arch for m in exp.config.teacher.members()]
    accs = {arch: evaluate_model(m.model, exp.task, exp.eval_data)["accuracy"] for arch, m in zip(archs, members)}

    class MeanProbs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.models = torch.nn.ModuleList([m.model for m in members])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(x).softmax(-1) for m in self.models]).mean(0).log()

    recipe = {"members": accs, "ensemble": evaluate_model(MeanProbs(), exp.task, exp.eval_data)["accuracy"],
              "test_images": len(exp.eval_data), **key}
    write_json(path, recipe)
    return recipe


def run_facts(args: argparse.Namespace, exp: Experiment) -> dict[str, Any]:
    """Facts a table row records before training: the extended data's sizes, MEAL V2's teacher accuracy."""
    extra: dict[str, Any] = {}
    d = exp.config.data
    if d.extra_val_per_class or d.extra_unlabeled_per_class:
        extra = {"train_images": len(exp.train_data), "val_images": len(exp.val_data) if exp.val_data else 0}
    if exp.config.teacher is not None and exp.config.teacher.ensemble:
        extra["teacher_accuracy"] = ensemble_recipe(args, exp)
    return extra


def trained_facts(exp: Experiment) -> dict[str, Any]:
    """Facts of the trained run a criterion reads: DHO's inference combiner a softmax(z_ce) + (1 - a)
    softmax(z_kd / b), fitted on the validation split after the last epoch; TGeo-KD's learned alpha by sample
    group (:func:`tgeo_alpha_groups`)."""
    if "tgeo" in exp.methods.methods:
        return {"alpha_groups": tgeo_alpha_groups(exp)}
    if "dho" not in exp.methods.methods:
        return {}
    dho = exp.methods.methods["dho"]
    if dho.kd_head_kind == "shared":  # the single-head control: no combiner
        return {}
    return {"combiner": {"a": dho.mix_a.item(), "b": dho.mix_b.item(), "val_accuracy": dho.val_accuracy.item()}}


@torch.no_grad()
def tgeo_alpha_groups(exp: Experiment, batch_size: int = 500) -> dict[str, Any]:
    """TGeo-KD's outlier probe (logit.md row 28): the trained fusion network's mean alpha over the training images
    (no augmentation, final weights) in three groups: the ``data.noise_images`` Gaussian-noise images (the last
    ones of the set), the clean images the teacher gets wrong, and the clean ones it gets right."""
    from distill.train.evaluate import eval_batches

    method = exp.methods.methods["tgeo"]
    n_noise = exp.config.data.noise_images or 0
    device = next(exp.student.parameters()).device
    exp.teacher.to(device)  # wherever the trainer left it
    method.to(device)
    was = exp.student.training
    exp.student.eval()
    alphas, wrong = [], []
    try:
        for batch in eval_batches(exp.task, exp.train_data, batch_size, device):
            zs = exp.task.forward(exp.student, batch)
            zt = exp.teacher(batch, exp.task).logits
            alphas.append(method.alpha(zs.float(), zt.float(), batch.labels).float().cpu())
            wrong.append((zt.argmax(-1) != batch.labels).cpu())
    finally:
        exp.student.train(was)
    alpha, wrong_t = torch.cat(alphas), torch.cat(wrong)
    clean = torch.ones_like(alpha, dtype=torch.bool)
    if n_noise:
        clean[-n_noise:] = False
    groups = {"noise": ~clean, "teacher_wrong": clean & wrong_t, "teacher_right": clean & ~wrong_t}
    return {name: {"mean_alpha": float(alpha[mask].mean()) if mask.any() else None, "n": int(mask.sum())}
            for name, mask in groups.items()}


def probe_run(args: argparse.Namespace, arm: str, exp: Experiment) -> dict[str, Any]:
    """``--probe-name``: the finished run probed (``benchmarks/probes.py``) before it is recorded, so a run in the
    table always has its probe, and a probe that fails or is stopped leaves the run unrecorded (a rerun resumes
    the finished run and probes it again)."""
    if not args.probe_name or (args.probe_arms and arm not in args.probe_arms):
        return {}
    cmd = [sys.executable, str(REPO / "benchmarks" / "probes.py"), "--out", str(args.out), "--name", args.probe_name,
           str(exp.trainer.run_dir)]
    subprocess.run(cmd, check=True)
    return {"probed": args.probe_name}


def arm_experiment(args: argparse.Namespace, arm: str, seed: int, teacher: Path | None, run_dir: Path,
                   data: dict[str, Any] | None = None, train: dict[str, Any] | None = None
                   ) -> tuple[Experiment, dict[str, Any]]:
    """The experiment of one arm: its recipe with the sweep's overrides (``data`` and ``train`` override more
    config keys), and the extra facts its table row records."""
    extra = [f"{section}.{k}={json.dumps(v)}" for section, d in (("data", data), ("train", train)) for k, v in
             (d or {}).items()]
    _, cfg = load_recipe(args.arms_files[arm], run_overrides(args, arm, seed, teacher, run_dir) + extra)
    exp = build_experiment(cfg)
    return exp, run_facts(args, exp)


def mealv2_teacher_line(rows: list[dict[str, Any]], test_images: int, data: str | None, out_dir: Path) -> str:
    """MEAL V2's teacher accuracy as the table prints it: only a measurement on the table's own evaluation set (as
    many test images, from the same archive) counts. The runs' own record comes first; else a
    ``mealv2_teacher*.json`` of ``benchmarks/mealv2_teacher.py``; else the line says it was not measured."""
    archive = Path(data).name if data else None
    found = [r["teacher_accuracy"] for r in rows if r.get("teacher_accuracy")]
    members = set(found[0]["members"]) if found else None  # the table's ensemble (MEAL V2's protocol: 3 ResNets)
    for path in sorted(out_dir.glob("mealv2_teacher*.json")):
        measured = json.loads(path.read_text())
        if (archive is not None and Path(str(measured.get("data", ""))).name == archive
                and (members is None or set(measured["members"]) == members)):
            found.append(measured | {"source": path.name})
    ens = next((e for e in found if e.get("test_images") == test_images), None)
    if ens is None:
        other = sorted({e.get("test_images") for e in found if e.get("test_images")})
        return (f"MEAL V2's teacher: not yet measured on this table's {test_images:,} test images "
                f"(`python benchmarks/mealv2_teacher.py --data {data} --name mealv2_teacher_10k`); "
                + (f"a record on {', '.join(f'{n:,}' for n in other)} images exists and is not shown."
                   if other else "no record."))
    members = ", ".join(f"{arch} {100 * a:.2f}%" for arch, a in ens["members"].items())
    source = f"; `{ens['source']}`" if ens.get("source") else ""
    return (f"MEAL V2's teacher: the pretrained ResNets ({members} on the {ens['test_images']:,} JPEG test images "
            f"scored here, not fine-tuned{source}), mean probabilities {100 * ens['ensemble']:.2f}%.")


def write_table(args: argparse.Namespace, results: dict[str, Any], out_dir: Path) -> Path:
    rows = results["runs"]
    summaries = summarise(rows, "accuracy", baseline="scratch", order=CATALOGUE)
    t = results["teacher"]
    configs = Path(getattr(args, "configs", None) or PAIRS.get(args.student, PAIRS["resnet20"]))
    base = base_recipe(configs)
    own = bool(base) and not str((base.get("teacher") or {}).get("weights", "")).startswith("builtin:")
    lines = [
        "Teachers: the published ResNets each recipe names, not fine-tuned (their accuracy below)." if own else
        f"Teacher: pretrained ResNet-56, {100 * t['test_accuracy_before']:.2f}% on the JPEG CIFAR-10 test split "
        f"before and {100 * t['test_accuracy_after']:.2f}% after fine-tuning ({t['train']['epochs']} epochs on "
        f"{t['train_images']} JPEG training images{', with mixup: the Mix-T teacher' if t.get('mixup') else ''}).",
        "",
        f"Student {args.student} {start_text(base)}, {args.per_class * 10} training images "
        f"(class-balanced), {args.epochs} epochs, {schedule_text(base)}; test on "
        f"{t['test_images'] if not args.quick else 'a subset of the'} test images; seeds "
        f"{', '.join(str(s) for s in sorted({r['seed'] for r in rows}))}.",
        "",
    ]
    if any(r.get("teacher_accuracy") for r in rows):
        lines += [mealv2_teacher_line(rows, t["test_images"], results["args"].get("data"), out_dir), ""]
    cost_path = out_dir / f"catalogue_cost_{args.student}.json"
    cost = json.loads(cost_path.read_text())["arms"] if cost_path.exists() and not args.quick else {}
    if cost:
        lines += [f"Cost columns from `python benchmarks/catalogue_cost.py --student {args.student}` "
                  f"({cost_path.name}): time per training step relative to scratch (every arm in one process, "
                  "fastest of interleaved rounds), and the seconds per epoch of this table's runs that it implies "
                  "on one CPU thread. The accuracy runs' own epoch times (in the JSON) do not compare arms: the "
                  "machine's load changed during the hours they took.", ""]
        lines += ["| method | test accuracy (%), mean ± sd | gain over scratch | per seed | step cost (x scratch) "
                  "| s / epoch | note | verdict |", "|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| method | test accuracy (%) mean ± sd | gain over scratch | per-seed | s / epoch | note "
                  "| verdict |", "|---|---|---|---|---|---|---|"]
    verdicts = cifar_verdicts(results, out_dir)
    folder = getattr(args, "configs", None) or PAIRS.get(args.student)
    files = recipes(folder) if folder is not None else {}
    for s in summaries:
        rs = sorted((r for r in rows if r["arm"] == s.arm), key=lambda r: r["seed"])
        times = [r["epoch_time_s"] for r in rs if r["epoch_time_s"]]  # None for a run resumed after its end
        ep = f"{statistics.mean(times):.1f}" if times else "-"
        if cost:
            c = cost.get(s.arm)
            ep = f"{c['vs_scratch']:.2f} | {c['epoch_s']:.0f}" if c else "- | -"
        raw = load_raw(files[s.arm]) if s.arm in files else {}
        note = arm_note(s.arm, load_recipe_raw(raw, subset_overrides(raw, args.per_class)) if raw else {})
        fits = [r["combiner"] for r in rs if r.get("combiner")]
        if fits:
            note += "; fitted (a, b): " + ", ".join(f"({c['a']:.2f}, {c['b']:g})" for c in fits)
        verdict = str(verdicts[s.arm]).replace("|", "/") if s.arm in verdicts else ""
        lines.append(f"| {s.arm} | {format_mean(s)} | {format_diff(s)} | "
                     f"{', '.join(f'{a:.2f}' for a in s.values.values())} | {ep} | {note} | {verdict} |")
    c = counts(verdicts)
    lines += ["", f"Verdicts (each spec's criterion, `benchmarks/verdicts.py`; baseline rows not counted): "
              f"{c['works']} works, {c['missed']} missed, {c['pending']} pending, {c['n.a.']} not applicable here."]
    if any(s.ci for s in summaries):
        lines += ["", "Gain: the mean paired difference to scratch over the seeds both ran; brackets: its 95% "
                  "t-interval."]
    for arm, why in getattr(args, "skipped", {}).items():
        lines += ["", f"Not applicable to this pair: {arm} ({why})."]
    if getattr(args, "catalogue", False):
        done = {s.arm for s in summaries}
        todo = [a for a in files if a not in done and a not in getattr(args, "skipped", {})]
        if todo:
            lines += ["", f"Still to run: {', '.join(todo)} (the command resumes where it stopped)."]
        if configs.resolve() == PAIRS.get(args.student, configs).resolve():  # a pair's catalogue folder
            lines += ["", "Not run: makd (multi-aspect KD) needs per-image aspect targets from a multimodal LLM, "
                      "which no offline teacher here gives; class-level aspects would be an auxiliary-label "
                      "ablation, not MaKD. Its spec demonstrates it on SST-2 with a text LLM instead."]
    md = out_dir / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def resolve_pair(args: argparse.Namespace) -> str | None:
    """Set ``args.configs`` (the recipe folder), ``args.student`` (its recipes' student) and ``args.arms_files``;
    an error message, or None."""
    if args.configs is None:
        student = args.student or "resnet20"
        if student not in PAIRS:
            return (f"--student {student}: no recipe folder for it (pairs: {', '.join(PAIRS)}); pass --configs DIR "
                    "with recipes for that student")
        args.configs = PAIRS[student]
    args.arms_files = recipes(args.configs)
    if not args.arms_files:
        return f"{args.configs}: no recipe files"
    student = recipe_student(args.configs)
    if args.student is not None and args.student != student:
        return f"--student {args.student}: the recipes in {args.configs} train {student}"
    args.student = student
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--data", type=Path, default=None, help="CIFAR-10 in any supported format")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--configs", type=Path, default=None,
                   help="the recipe folder (default: configs/cifar10, or configs/cifar10_mobilenetv2 with --student "
                        "mobilenetv2)")
    p.add_argument("--arms", nargs="+", default=ISSUE2_ARMS, metavar="ARM",
                   help="recipes to compare, by file stem ('all': every recipe of the folder)")
    p.add_argument("--only", nargs="+", default=None, metavar="ARM",
                   help="train only these of --arms (the table still covers all of --arms)")
    p.add_argument("--name", default=None, help="stem of the result files (default cifar10_kd[_STUDENT])")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=None, help="default: the recipes' (15)")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--per-class", type=int, default=None, help="training images per class (default: the recipes')")
    p.add_argument("--student", default=None, help="picks the pair's recipe folder (resnet20, mobilenetv2)")
    p.add_argument("--quick", action="store_true", help="tiny CI variant: 1 seed, 2 epochs, small subsets")
    p.add_argument("--ship-teacher", action="store_true", help="copy the fine-tuned teacher into the package")
    p.add_argument("--teacher-mixup", action="store_true",
                   help="fine-tune and use the Mix-T teacher (the pretrained ResNet-56 fine-tuned with mixup, "
                        "logit.md row 26) instead of --teacher")
    p.add_argument("--probe-name", default=None, metavar="NAME",
                   help="probe each finished run into benchmarks/results/probes_NAME.json before recording it")
    p.add_argument("--probe-arms", nargs="+", default=None, metavar="ARM",
                   help="with --probe-name: probe only these arms' runs (default: every run)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the Markdown table and the plots from the JSON of --name, without training")
    p.add_argument("--teacher", type=Path, default=None,
                   help="use this fine-tuned ResNet-56 (e.g. src/distill/assets/resnet56_cifar10_jpeg.safetensors)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    error = resolve_pair(args)
    if error:
        print(error, file=sys.stderr)
        return 2
    first = load_raw(next(iter(args.arms_files.values())))
    args.epochs = args.epochs or first["train"]["epochs"]
    args.per_class = args.per_class or first["data"]["train_per_class"]
    args.data = args.data or args.shared / "data" / "cifar10-jpeg.tar.gz"
    if not args.data.exists():
        print(f"data not found: {args.data} (pass --data or put ../shared beside the repo)", file=sys.stderr)
        return 2
    if args.quick:
        import tempfile

        args.work = Path(tempfile.mkdtemp(prefix="distill-bench-")) if args.work == REPO / "benchmarks" / "work" \
            else args.work
        args.out = args.work / "results"
        args.seeds, args.epochs, args.per_class = [0], 2, min(args.per_class, 20)
    args.out.mkdir(parents=True, exist_ok=True)
    args.catalogue = "all" in args.arms
    if args.catalogue:
        args.arms = list(args.arms_files)
    inapplicable = inapplicable_arms(args.student)
    args.skipped = {a: why for a, why in inapplicable.items() if a in CATALOGUE and a not in args.arms_files}
    for arm in [*args.arms, *(args.only or [])]:
        if arm not in args.arms_files:
            why = inapplicable.get(arm)
            print(f"--arms {arm}: not applicable to {args.student}: {why}" if why else
                  f"--arms {arm}: no recipe {args.configs}/{arm}.yaml; recipes: {', '.join(args.arms_files)}",
                  file=sys.stderr)
            return 2
    for arm, why in args.skipped.items():
        if args.catalogue:
            print(f"skipping {arm}: {why}", flush=True)
    args.name = args.name or ("cifar10_kd" if args.student == "resnet20" else f"cifar10_kd_{args.student}")
    results_path = args.out / f"{args.name}.json"
    if args.report_only:
        if not results_path.exists():
            print(f"--report-only: {results_path} does not exist", file=sys.stderr)
            return 2
        results = json.loads(results_path.read_text())
        for key in ("student", "epochs", "per_class"):  # the table describes the runs, not this command line
            setattr(args, key, results["args"].get(key, getattr(args, key)))
        recorded = REPO / (results["args"].get("configs") or "-")  # repo-relative; older files: the student's pair
        args.configs = recorded if recorded.is_dir() else PAIRS.get(args.student, args.configs)
        args.catalogue = args.catalogue or results["args"].get("catalogue", False)
        args.skipped = inapplicable_arms(args.student) if args.catalogue else {}
        return report(args, results)
    start = time.perf_counter()
    if args.teacher_mixup:  # the Mix-T teacher, fine-tuned here once (--teacher is then not used)
        teacher = finetune_teacher(args, mixup=True)
        teacher_weights = args.work / "teacher-mixup" / "resnet56_cifar10_jpeg.safetensors"
    elif args.teacher is not None:  # an already fine-tuned teacher, with its recipe JSON beside it
        teacher_weights = args.teacher
        teacher = json.loads(args.teacher.with_suffix(".json").read_text())
    else:
        teacher = finetune_teacher(args)
        teacher_weights = args.work / "teacher" / "resnet56_cifar10_jpeg.safetensors"
    if args.ship_teacher:
        shutil.copy(teacher_weights, ASSETS / teacher_weights.name)
        write_json(ASSETS / "resnet56_cifar10_jpeg.json", teacher)
    results: dict[str, Any] = {"teacher": teacher, "runs": [], "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "arms_files"}}
    if not args.quick:
        results["runs"] = previous_runs(results_path, results, ("epochs",))
    sweep = Sweep({a: args.arms_files[a] for a in args.arms}, args.seeds, results_path,
                  overrides=lambda arm, seed: run_overrides(args, arm, seed, teacher_weights,
                                                            run_dir_of(args, arm, seed)),
                  before_fit=lambda arm, exp: run_facts(args, exp),
                  after_fit=lambda arm, exp: trained_facts(exp) | probe_run(args, arm, exp),
                  repo=REPO)
    sweep.run(results, only=args.only)
    report(args, results)
    print(f"total {time.perf_counter() - start:.0f}s; results in {args.out}")
    return 0


def report(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """The Markdown table and the plots: learning curves of the first seed's runs, or for the catalogue the gain
    of every arm over scratch, one bar colour per pair (every ``cifar10_catalogue*.json`` in the output folder)."""
    md = write_table(args, results, args.out)
    if args.catalogue:
        groups = {}
        for path in sorted(args.out.glob("cifar10_catalogue*.json")):
            res = json.loads(path.read_text())
            student = res.get("args", {}).get("student", "resnet20")
            scores: dict[str, list[float]] = {}
            for r in res.get("runs", []):
                scores.setdefault(r["arm"], []).append(100 * r["accuracy"])
            if "scratch" in scores:
                groups[f"ResNet-56 -> {student}"] = scores
        if groups:
            plot_gains(groups, args.out / "cifar10_catalogue_gains.png", title="CIFAR-10 JPEG, 5,000 images, 15 "
                       "epochs: gain over scratch",
                       xlabel="test accuracy gain over scratch (points); dots: seeds")
    else:
        runs = {f"{r['arm']} (seed {r['seed']})": Path(r["run_dir"]) for r in results["runs"]
                if r["seed"] == args.seeds[0] and Path(r["run_dir"]).exists()}
        plot_runs(runs, args.out / f"{args.name}.png", title=f"ResNet-56 -> {args.student}, CIFAR-10 JPEG")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
