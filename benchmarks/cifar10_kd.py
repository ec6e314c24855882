"""Benchmark: fine-tune the pretrained ResNet-56 on JPEG CIFAR-10, then distil it into a ResNet-20.

    python benchmarks/cifar10_kd.py                      # full run (writes benchmarks/results/cifar10_kd.*)
    python benchmarks/cifar10_kd.py --quick              # a few minutes, for CI (writes to a temp folder)
    python benchmarks/cifar10_kd.py --arms all --name cifar10_catalogue \
        --teacher src/distill/assets/resnet56_cifar10_jpeg.safetensors   # the whole classification catalogue
    ... --student mobilenetv2 (or shufflenetv2)           # the heterogeneous pair, same arms, seeds and schedule

Arms (same seeds, data subset and schedule): by default scratch (CE), KD, FitNet and AT; ``--arms all`` runs
the whole classification catalogue. Loss weights are those of the RepDistiller/mdistiller CIFAR tables (KD: CE
0.1 + KD 0.9 at T=4; FitNet: CE + 100 * hint on f2; AT: CE + 1000 * AT on f1..f3; see ``arms``).

Arms whose protocol differs (``PROTOCOLS``; the table's note column says so):

- ``tgeo``: its bilevel solver needs a validation split: 50 labelled images per class held out from the rest of
  the train split (outside the 5,000 training images, which stay the same as every other arm's).
- ``dho``: semi-supervised: the same 5,000 labelled images plus 500 per class from the rest of the train split
  with their labels hidden (so an epoch has twice the steps), and 50 per class held out for its head combiner.
- ``mealv2``: the teacher is the ensemble of the four pretrained akamaster ResNets (20/32/44/56, not fine-tuned
  on the JPEGs) averaged in probability space; no hard labels. Its accuracy is measured and printed above the
  table.
- ``lelp`` is a few-class method (the paper's vision setting is binarised CIFAR); on CIFAR-10 it runs as
  specified (10 classes x 4 pseudo-subclasses, alpha = 0), which is not the regime it was designed for.

Heterogeneous pair (``--student mobilenetv2`` or ``shufflenetv2``): every arm runs except FSP, which needs
equal channel counts at its layer pairs and is reported as not applicable (``inapplicable_arms``). MobileNetV2
(width 0.5) is the cheaper student: a from-scratch step costs about half of ResNet-20's, ShuffleNetV2's about
twice. ReviewKD is the expensive arm there: its fusion width follows the official rule min(512, channels of the
student's last feature), 512 for both (64 for ResNet-20), so its step costs about 2.5x (MobileNetV2) and 4.5x
(ShuffleNetV2) ResNet-20's ReviewKD step.

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
import fcntl
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.config import parse_config
from distill.core.taps import FeatureTaps
from distill.data.images import UNLABELED, ImageArrays, load_images
from distill.experiment import build_experiment, evaluate_model
from distill.models import build_model
from distill.report.plots import plot_gains, plot_runs
from distill.train.checkpoint import save_weights
from distill.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "distill" / "assets"

def student_taps(student: str) -> dict[str, str]:
    """The named feature taps (``f1``, ``f1_pre``, ``pooled``, ...) of a student architecture."""
    return dict(getattr(build_model(student, num_classes=10), "feature_taps", {}))


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


def arms(epochs: int, student: str = "resnet20") -> dict[str, list[dict[str, Any]]]:
    """Every classification method with the loss weights of the CIFAR tables (RepDistiller / mdistiller / the
    official repos; see each method's docstring). Warm-ups and initialisation stages are scaled to the short
    schedule: warm-ups last a third of it, initialisation stages 2 epochs (officially 20 and 30 of 240).

    Feature taps are the generic names every CIFAR model defines (``f1``..``f3``, ``pooled``). AB wants
    pre-ReLU maps: the student's ``fK_pre`` where it has them (ResNets), else ``fK`` (MobileNetV2's block outputs
    are linear bottlenecks, i.e. already pre-activation; ShuffleNetV2 has no separate pre-ReLU tap, as in
    RepDistiller's heterogeneous AB runs, where the student's connector output is what the hinge sees)."""
    warm = max(1, epochs // 3)
    ce = {"name": "ce", "weight": 1.0}
    taps = student_taps(student)
    ab_student = [f"f{k}_pre" if f"f{k}_pre" in taps else f"f{k}" for k in (1, 2, 3)]
    return {
        "scratch": [ce],
        "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}],
        "fitnet": [ce, {"name": "fitnet", "weight": 100.0, "student": "f2", "teacher": "f2"}],
        "at": [ce, {"name": "at", "weight": 1000.0, "student": ["f1", "f2", "f3"]}],
        "sp": [ce, {"name": "sp", "weight": 3000.0, "student": ["f3"]}],
        "cc": [ce, {"name": "cc", "weight": 0.02, "variant": "repdistiller"}],
        "vid": [ce, {"name": "vid", "weight": 1.0, "student": ["f1", "f2", "f3"]}],
        "rkd": [ce, {"name": "rkd", "weight": 1.0}],
        "pkt": [ce, {"name": "pkt", "weight": 30000.0}],
        "ab": [ce, {"name": "ab", "weight": 1.0, "init_epochs": 2, "student": ab_student,
                    "teacher": ["f1_pre", "f2_pre", "f3_pre"]}],
        "ft": [ce, {"name": "ft", "weight": 500.0, "init_epochs": 2}],  # the paper factor's beta (200: RepDistiller's)
        "fsp": [ce, {"name": "fsp", "weight": 50.0, "init_epochs": 2}],
        "nst": [ce, {"name": "nst", "weight": 50.0}],
        "crd": [ce, {"name": "crd", "weight": 0.8, "num_negatives": 4096, "negatives": "other_classes"}],
        "dkd": [ce, {"name": "dkd", "alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup": warm}],
        "dist": [ce, {"name": "dist", "weight": 2.0, "tau": 4.0}],
        "lskd": [{"name": "lskd", "temperature": 2.0, "kl_weight": 9.0, "ce_weight": 0.1}],
        # ReviewKD: 0.6 is the official weight for this teacher (resnet56 -> resnet20, CIFAR-100/script/reviewKD.sh);
        # the official script has no MobileNetV2 student, so the heterogeneous pair keeps the teacher's value.
        "reviewkd": [ce, {"name": "reviewkd", "weight": 0.6, "warmup_epochs": warm}],
        "pld": [{"name": "pld", "tau": 1.0}],
        "nd": [{"name": "nd", "nd_weight": 2.0, "ce_weight": 1.0, "kd_weight": 1.0, "temperature": 4.0,
                "warmup_epochs": warm}],
        # MIX-KD (hchoi71/MIX-KD): the KD arm's loss on FMU-mixed batches (per-sample lambda ~ Beta(1, 1)) at the
        # KD arm's T = 4 and at the T = 1 the paper recommends under mixup; MIXSTD alone (no mixup); and the
        # official recipe mixkd = PMU (partmixup 0.9, with-replacement) + MIXSTD (gamma 0.1, alpha 0.9).
        "mixup": [{"name": "mixup", "strategy": "fmu", "beta": 1.0}, {"name": "ce", "weight": 0.1},
                  {"name": "kd", "weight": 0.9, "temperature": 4.0}],
        "mixup_t1": [{"name": "mixup", "strategy": "fmu", "beta": 1.0}, {"name": "ce", "weight": 0.1},
                     {"name": "kd", "weight": 0.9, "temperature": 1.0}],
        "mixstd": [{"name": "mixstd", "ce_weight": 0.1, "kl_weight": 0.9}],
        "mixkd": [{"name": "mixkd", "strategy": "pmu", "partmixup": 0.9, "pmu_sampling": "with_replacement",
                   "beta": 1.0, "ce_weight": 0.1, "kl_weight": 0.9}],
        # TGeo-KD (reconstruction, no official code): its loss holds both CE and KD; omega learned every step by
        # a one-step look-ahead on the held-out validation split (PROTOCOLS); inner_lr = the run's lr 0.05.
        "tgeo": [{"name": "tgeo", "temperature": 4.0, "hidden": 64, "meta_lr": 1e-3, "inner_lr": 0.05,
                  "update_every": 1}],
        # DHO (erjui/DHO few-shot script): T = 2, CE and KD weights 0.5/0.5, KL of labelled + KL of unlabelled
        # rows ("split", the official two-loader sum); (a, b) fitted on the validation split after every epoch.
        "dho": [{"name": "dho", "temperature": 2.0, "ce_weight": 0.5, "kd_weight": 0.5, "kd_reduction": "split",
                 "student": "pooled"}],
        # LELP (reconstruction): S = 4 pseudo-subclasses, beta 1, alpha = 0 (no CE) as in the paper, targets
        # fitted once on the unaugmented training set and served by index.
        "lelp": [{"name": "lelp", "subclasses": 4, "beta": 1.0, "targets": "cached", "assign": "labels",
                  "ce_weight": 0.0}],
        # MEAL V2: soft CE to the ensemble's mean probabilities (teacher: PROTOCOLS) + the jointly trained logit
        # discriminator on the mean logits, official joint mode; no hard labels.
        "mealv2": [{"name": "mealv2", "discriminator": True, "mode": "joint", "discriminator_input": "mean_logits"}],
    }


#: pretrained akamaster CIFAR-10 ResNets in ../shared/models/resnet-cifar10 (MEAL V2's teacher ensemble)
ENSEMBLE = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
            "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}

#: arms whose data or teacher differs from the shared protocol (built by ``run_arm``), with the table's note.
#: ``val_fraction`` / ``unlabeled_factor`` (times ``--per-class``) images per class come from the train split
#: *outside* the training subset, so every arm trains on the same labelled images.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "tgeo": {"val_fraction": 0.1, "note": "+{val}/class held-out validation images for the bilevel update"},
    "dho": {"val_fraction": 0.1, "unlabeled_factor": 1.0,
            "note": "+{unl}/class unlabelled images (more steps per epoch), +{val}/class validation images for "
                    "the head combiner"},
    "mealv2": {"teacher": "ensemble", "note": "teacher: the 4 pretrained ResNets (20/32/44/56), mean "
               "probabilities; no labels; shared schedule (official: weight decay 0, pretrained student)"},
    "lelp": {"note": "few-class method (paper: binarised CIFAR); here 10 classes x 4 pseudo-subclasses"},
}


def extra_per_class(arm: str, per_class: int) -> tuple[int, int]:
    """(validation, unlabelled) images per class an arm adds from outside the training subset."""
    proto = PROTOCOLS.get(arm, {})
    n_val = max(1, round(per_class * proto["val_fraction"])) if proto.get("val_fraction") else 0
    n_unl = max(1, round(per_class * proto["unlabeled_factor"])) if proto.get("unlabeled_factor") else 0
    return n_val, n_unl


def arm_note(arm: str, per_class: int) -> str:
    n_val, n_unl = extra_per_class(arm, per_class)
    return PROTOCOLS.get(arm, {}).get("note", "").format(val=n_val, unl=n_unl)


ISSUE2_ARMS = ["scratch", "kd", "fitnet", "at"]


def base_data(args: argparse.Namespace) -> dict[str, Any]:
    return {"train": str(args.data), "eval": str(args.data), "normalize": "imagenet",
            "augment": {"crop_padding": 4, "flip": True}, "cache_dir": str(args.work / "cache")}


def finetune_teacher(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the pretrained ResNet-56 on the JPEG train split (once), report test accuracy before/after."""
    out = args.work / "teacher"
    weights = out / "resnet56_cifar10_jpeg.safetensors"
    recipe_path = out / "recipe.json"
    if weights.exists() and recipe_path.exists():
        return json.loads(recipe_path.read_text())
    pretrained = args.shared / "models" / "resnet-cifar10" / "resnet56-4bfd9763.th"
    epochs = 1 if args.quick else args.teacher_epochs
    raw = {
        "output_dir": str(out / "run"),
        "seed": 0,
        "data": {**base_data(args), **({"train_per_class": 100, "eval_per_class": 50} if args.quick else {})},
        "student": {"arch": "resnet56", "weights": str(pretrained)},
        "methods": [{"name": "ce"}],
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
              "test_images": len(exp.eval_data), "train_images": len(exp.train_data)}
    recipe_path.write_text(json.dumps(recipe, indent=2))
    return recipe


def teacher_config(args: argparse.Namespace, arm: str, teacher: Path) -> dict[str, Any]:
    """The fine-tuned ResNet-56, or (MEAL V2) the ensemble of the four pretrained ResNets in probability space."""
    if PROTOCOLS.get(arm, {}).get("teacher") == "ensemble":
        folder = args.shared / "models" / "resnet-cifar10"
        return {"ensemble": [{"arch": arch, "weights": str(folder / name)} for arch, name in ENSEMBLE.items()],
                "reduce": "probs"}
    return {"arch": "resnet56", "weights": str(teacher)}


def held_out_data(args: argparse.Namespace, train: ImageArrays, per_class: int, arm: str
                  ) -> tuple[ImageArrays, ImageArrays | None]:
    """(training set, validation set) of an arm with extra data (``PROTOCOLS``): validation images and unlabelled
    images per class drawn from the train split outside the ``per_class`` training subset (``subset_seed`` 0),
    so ``train`` (the shared labelled subset) is kept as it is and only extended with unlabelled rows."""
    n_val, n_unl = extra_per_class(arm, per_class)
    if not (n_val or n_unl):
        return train, None
    full = load_images(args.data, split="train", cache_dir=args.work / "cache")
    chosen = full.balanced_indices(per_class, 0)  # the subset build_experiment drew (subset_seed 0)
    if not torch.equal(full.labels[chosen], train.labels):
        raise RuntimeError("held_out_data: the training subset does not match the experiment's")
    rest = torch.ones(len(full), dtype=torch.bool)
    rest[chosen] = False
    pool = full.subset(rest.nonzero().flatten())
    val = None
    if n_val:
        val, pool = pool.split_off(n_val, 1)
    if n_unl:
        unl = pool.subset(pool.balanced_indices(n_unl, 2))
        hidden = torch.full_like(unl.labels, UNLABELED)
        train = ImageArrays(torch.cat([train.images, unl.images]), torch.cat([train.labels, hidden]),
                            list(train.classes), f"{train.source} + {n_unl} unlabelled per class")
    return train, val


def ensemble_recipe(args: argparse.Namespace, exp: Any) -> dict[str, Any]:
    """Test accuracy of each member of MEAL V2's ensemble and of their mean probabilities (measured once)."""
    path = args.work / "ensemble.json"
    if path.exists():
        return json.loads(path.read_text())
    members = exp.teacher.members
    accs = {arch: evaluate_model(m.model, exp.task, exp.eval_data)["accuracy"] for arch, m in zip(ENSEMBLE, members)}

    class MeanProbs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.models = torch.nn.ModuleList([m.model for m in members])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(x).softmax(-1) for m in self.models]).mean(0).log()

    recipe = {"members": accs, "ensemble": evaluate_model(MeanProbs(), exp.task, exp.eval_data)["accuracy"],
              "test_images": len(exp.eval_data)}
    path.write_text(json.dumps(recipe, indent=2))
    return recipe


def arm_experiment(args: argparse.Namespace, arm: str, seed: int, teacher: Path, run_dir: Path,
                   data: dict[str, Any] | None = None, train: dict[str, Any] | None = None
                   ) -> tuple[Any, dict[str, Any]]:
    """The experiment of one arm (shared schedule, the arm's methods, teacher and extra data; ``data`` and
    ``train`` override config keys) and the extra facts its table row records."""
    epochs = args.epochs
    raw = {
        "output_dir": str(run_dir),
        "seed": seed,
        "data": {**base_data(args), "train_per_class": args.per_class, "subset_seed": 0,
                 **({"eval_per_class": 50} if args.quick else {})},
        "student": {"arch": args.student},
        "teacher": teacher_config(args, arm, teacher),
        "methods": arms(epochs, args.student)[arm],
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "step", "milestones": [round(0.6 * epochs), round(0.8 * epochs)],
                  "eval_every": max(1, epochs // 5), "log_every": 20, "progress": False, **(train or {})},
    }
    raw["data"].update(data or {})
    exp = build_experiment(parse_config(raw))
    extra: dict[str, Any] = {}
    train_data, val = held_out_data(args, exp.train_data, args.per_class, arm)
    if train_data is not exp.train_data or val is not None:  # the same experiment, on the extended data
        exp.trainer = Trainer(exp.module, train_data, exp.eval_data, exp.trainer.cfg, run_dir, val_data=val)
        extra = {"train_images": len(train_data), "val_images": len(val) if val is not None else 0}
    if PROTOCOLS.get(arm, {}).get("teacher") == "ensemble":
        extra["teacher_accuracy"] = ensemble_recipe(args, exp)
    return exp, extra


def run_arm(args: argparse.Namespace, arm: str, seed: int, teacher: Path) -> dict[str, Any]:
    run_dir = args.work / "runs" / f"{args.student}-e{args.epochs}-n{args.per_class}-{arm}-seed{seed}"
    exp, extra = arm_experiment(args, arm, seed, teacher, run_dir)
    summary = exp.fit(resume=True)
    if "dho" in exp.methods.methods:  # its inference combiner a softmax(z_ce) + (1 - a) softmax(z_kd / b), fitted
        dho = exp.methods.methods["dho"]  # on the validation split after the last epoch
        extra["combiner"] = {"a": dho.mix_a.item(), "b": dho.mix_b.item(), "val_accuracy": dho.val_accuracy.item()}
    times = [h["epoch_time"] for h in summary["history"]]
    return {"arm": arm, "seed": seed, "accuracy": summary["final"]["accuracy"],
            "epoch_time_s": statistics.median(times) if times else None, "run_dir": str(run_dir),
            "methods": arms(args.epochs, args.student)[arm], **extra}


def write_table(args: argparse.Namespace, results: dict[str, Any], out_dir: Path) -> Path:
    rows = results["runs"]
    by_arm: dict[str, list[dict[str, Any]]] = {}
    order = {arm: i for i, arm in enumerate(arms(1))}  # catalogue order, whichever process finished first
    for r in sorted(rows, key=lambda r: (order.get(r["arm"], len(order)), r["seed"])):
        by_arm.setdefault(r["arm"], []).append(r)
    base = statistics.mean(r["accuracy"] for r in by_arm.get("scratch", [])) if "scratch" in by_arm else None
    t = results["teacher"]
    lines = [
        f"Teacher: pretrained ResNet-56, {100 * t['test_accuracy_before']:.2f}% on the JPEG CIFAR-10 test split "
        f"before and {100 * t['test_accuracy_after']:.2f}% after fine-tuning ({t['train']['epochs']} epochs on "
        f"{t['train_images']} JPEG training images).",
        "",
        f"Student {args.student} from scratch, {args.per_class * 10} training images (class-balanced), "
        f"{args.epochs} epochs, SGD lr 0.05 x0.1 at 60%/80%, batch 64, crop+flip; test on "
        f"{t['test_images'] if not args.quick else 'a subset of the'} test images; seeds "
        f"{', '.join(str(s) for s in sorted({r['seed'] for r in rows}))}.",
        "",
    ]
    ens = next((r["teacher_accuracy"] for r in rows if r.get("teacher_accuracy")), None)
    if ens is not None:
        members = ", ".join(f"{arch} {100 * a:.2f}%" for arch, a in ens["members"].items())
        lines += [f"MEAL V2's teacher: the pretrained ResNets ({members} on {ens['test_images']} JPEG test images, "
                  f"not fine-tuned), mean probabilities {100 * ens['ensemble']:.2f}%.", ""]
    cost_path = out_dir / f"catalogue_cost_{args.student}.json"
    cost = json.loads(cost_path.read_text())["arms"] if cost_path.exists() and not args.quick else {}
    if cost:
        lines += [f"Cost columns from `python benchmarks/catalogue_cost.py --student {args.student}` "
                  f"({cost_path.name}): time per training step relative to scratch (every arm in one process, "
                  "fastest of interleaved rounds), and the seconds per epoch of this table's runs that it implies "
                  "on one CPU thread. The accuracy runs' own epoch times (in the JSON) do not compare arms: the "
                  "machine's load changed during the hours they took.", ""]
        lines += ["| method | test accuracy (%), mean ± sd | gain over scratch | per seed | step cost (x scratch) "
                  "| s / epoch | note |", "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| method | test accuracy (%) mean ± sd | gain over scratch | per-seed | s / epoch | note |",
                  "|---|---|---|---|---|---|"]
    for arm, rs in by_arm.items():
        accs = [100 * r["accuracy"] for r in rs]
        mean = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        gain = "" if base is None or arm == "scratch" else f"{mean - 100 * base:+.2f}"
        times = [r["epoch_time_s"] for r in rs if r["epoch_time_s"]]  # None for a run resumed after its end
        ep = f"{statistics.mean(times):.1f}" if times else "-"
        if cost:
            c = cost.get(arm)
            ep = f"{c['vs_scratch']:.2f} | {c['epoch_s']:.0f}" if c else "- | -"
        note = arm_note(arm, args.per_class)
        fits = [r["combiner"] for r in rs if r.get("combiner")]
        if fits:
            note += "; fitted (a, b): " + ", ".join(f"({c['a']:.2f}, {c['b']:g})" for c in fits)
        acc = f"{mean:.2f} ± {sd:.2f}" if len(accs) > 1 else f"{mean:.2f}"
        lines.append(f"| {arm} | {acc} | {gain} | {', '.join(f'{a:.2f}' for a in accs)} | {ep} "
                     f"| {note} |")
    for arm, why in getattr(args, "skipped", {}).items():
        lines += ["", f"Not applicable to this pair: {arm} ({why})."]
    if getattr(args, "catalogue", False):
        todo = [a for a in arms(1, args.student) if a not in by_arm and a not in getattr(args, "skipped", {})]
        if todo:
            lines += ["", f"Still to run: {', '.join(todo)} (the command resumes where it stopped)."]
        lines += ["", "Not run: makd (multi-aspect KD) needs per-image aspect targets from a multimodal LLM, which "
                  "no offline teacher here gives; class-level aspects would be an auxiliary-label ablation, not "
                  "MaKD. Its spec demonstrates it on SST-2 with a text LLM instead."]
    md = out_dir / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--data", type=Path, default=None, help="CIFAR-10 in any supported format")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--arms", nargs="+", default=ISSUE2_ARMS, choices=["all", *arms(1)],
                   help="methods to compare ('all': the whole classification catalogue)")
    p.add_argument("--only", nargs="+", default=None, choices=list(arms(1)),
                   help="train only these of --arms (the table still covers all of --arms)")
    p.add_argument("--name", default=None, help="stem of the result files (default cifar10_kd[_STUDENT])")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--student", default="resnet20")
    p.add_argument("--quick", action="store_true", help="tiny CI variant: 1 seed, 2 epochs, small subsets")
    p.add_argument("--ship-teacher", action="store_true", help="copy the fine-tuned teacher into the package")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the Markdown table and the plots from the JSON of --name, without training")
    p.add_argument("--teacher", type=Path, default=None,
                   help="use this fine-tuned ResNet-56 (e.g. src/distill/assets/resnet56_cifar10_jpeg.safetensors)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
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
        args.arms = list(arms(1))
    args.skipped = {a: why for a, why in inapplicable_arms(args.student).items() if a in args.arms}
    for arm, why in args.skipped.items():
        if not args.catalogue:
            print(f"--arms {arm}: not applicable to {args.student}: {why}", file=sys.stderr)
            return 2
        print(f"skipping {arm}: {why}", flush=True)
    args.arms = [a for a in args.arms if a not in args.skipped]
    args.name = args.name or ("cifar10_kd" if args.student == "resnet20" else f"cifar10_kd_{args.student}")
    results_path = args.out / f"{args.name}.json"
    if args.report_only:
        if not results_path.exists():
            print(f"--report-only: {results_path} does not exist", file=sys.stderr)
            return 2
        results = json.loads(results_path.read_text())
        for key in ("student", "epochs", "per_class"):  # the table describes the runs, not this command line
            setattr(args, key, results["args"].get(key, getattr(args, key)))
        args.catalogue = args.catalogue or results["args"].get("catalogue", False)
        args.skipped = inapplicable_arms(args.student) if args.catalogue else {}
        return report(args, results)
    start = time.perf_counter()
    if args.teacher is not None:  # an already fine-tuned teacher, with its recipe JSON beside it
        teacher_weights = args.teacher
        teacher = json.loads(args.teacher.with_suffix(".json").read_text())
    else:
        teacher = finetune_teacher(args)
        teacher_weights = args.work / "teacher" / "resnet56_cifar10_jpeg.safetensors"
    if args.ship_teacher:
        shutil.copy(teacher_weights, ASSETS / teacher_weights.name)
        (ASSETS / "resnet56_cifar10_jpeg.json").write_text(json.dumps(teacher, indent=2))
    results: dict[str, Any] = {"teacher": teacher, "runs": [], "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if results_path.exists() and not args.quick:
        old = json.loads(results_path.read_text())
        if old.get("args", {}).get("epochs") == args.epochs:
            results["runs"] = old.get("runs", [])
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done or (args.only and arm not in args.only):
                continue
            t0 = time.perf_counter()
            r = run_arm(args, arm, seed, teacher_weights)
            print(f"{arm:8s} seed {seed}: {100 * r['accuracy']:.2f}%  ({time.perf_counter() - t0:.0f}s)", flush=True)
            save_run(results_path, results, r)
    report(args, results)
    print(f"total {time.perf_counter() - start:.0f}s; results in {args.out}")
    return 0


def save_run(results_path: Path, results: dict[str, Any], run: dict[str, Any]) -> None:
    """Add ``run`` to the runs in the results file as it is now (other processes may have written there since we
    read it), under an exclusive lock, replaced atomically so that a crash mid-write never leaves a broken file."""
    with open(results_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.loads(results_path.read_text()) if results_path.exists() else {}
        merged = {(r["arm"], r["seed"]): r for r in on_disk.get("runs", [])
                  if on_disk.get("args", {}).get("epochs") == results["args"]["epochs"]}
        merged[(run["arm"], run["seed"])] = run
        results["runs"] = list(merged.values())
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(results_path)


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
