"""Benchmark: what a teacher cache saves. Epoch times of the student alone, online KD and cached KD.

    python benchmarks/speed.py                 # writes benchmarks/results/speed.{json,md}
    python benchmarks/speed.py --quick         # a smoke run (tiny data, 1 repeat) into a temp folder

One process, one thread (``torch.set_num_threads(1)``), CPU. Two teacher -> student pairs:

* ``r56->r20``: the pretrained ResNet-56 (``src/distill/assets/resnet56_cifar10_jpeg.safetensors``) into a
  ResNet-20, on the shipped CIFAR-10 demo images (500 training images, 50 per class; 1,000 test images).
* ``r32x4->wrn16-1``: a ResNet-32x4 teacher (randomly initialised: only its cost matters for timing) into a
  WRN-16-1 student, whose forward pass is more than 10x cheaper (the ratio is measured and reported).

Arms, all with random crop + flip augmentation and SGD, batch 64: ``student`` (CE alone), ``online`` (CE 0.1 +
KD 0.9 at T = 4 against the live teacher), ``cached-full`` (the same loss against a full-logits cache) and
``cached-topK`` for K in 1, 2, 5 (the top-K teacher log-probabilities of 10 classes plus the tail bucket holding
the rest, so K = 1 keeps the arg-max probability and 1 - it; K = 10 would be the full distribution). Caches store
``--views`` augmented views per example (FKD replay); each epoch the student sees one of them.

Timing: every arm trains one epoch per repeat; repeats are interleaved (arm order rotated each repeat) because
the machine is shared and noisy, and each ratio is the median over repeats of (arm epoch time / student-alone
epoch time in the same repeat), for the process's CPU time (robust to other jobs) and for wall-clock time.
Also reported: cache build time (the teacher run over every view) and size on disk, the error of float16 /
bfloat16 storage, and the test accuracy of full versus top-k caches after the same short schedule on the
pretrained pair.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

from distill.cache import CacheSettings, TeacherCache, build_teacher_cache, cache_fingerprint
from distill.core.compose import Composite
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.data.images import load_images
from distill.methods.logits import KD, CrossEntropy
from distill.models import build_model
from distill.models.weights import load_weights_into
from distill.tasks.classification import ImageClassification
from distill.train.evaluate import evaluate_model
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "distill" / "assets"
TOPK = (1, 2, 5)


def make_task(cache: TeacherCache | None = None) -> ImageClassification:
    return ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4), augment_source=cache)


def kd_methods(alone: bool) -> Composite:
    if alone:
        return Composite({"ce": CrossEntropy()}, {"ce": 1.0})
    return Composite({"ce": CrossEntropy(), "kd": KD(temperature=4.0)}, {"ce": 0.1, "kd": 0.9})


def forward_ms(model: torch.nn.Module, reps: int = 2) -> float:
    """Median forward time (ms) of a batch of 64 in eval mode."""
    model.eval()
    x = torch.randn(64, 3, 32, 32)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


class Pair:
    """A teacher, a student architecture, training data, and the caches of the teacher on that data."""

    def __init__(self, name: str, teacher: torch.nn.Module, student_arch: str, train: Any, args: argparse.Namespace,
                 work: Path):
        self.name, self.teacher, self.student_arch, self.train = name, teacher.eval(), student_arch, train
        self.work = work / name
        self.caches: dict[str, TeacherCache] = {}
        self.builds: dict[str, dict[str, Any]] = {}
        self.args = args

    def student(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(self.student_arch, num_classes=10)

    def build_caches(self, log, views: int) -> None:
        full_settings = CacheSettings(views=views, seed=0)
        t = time.perf_counter()
        build_teacher_cache(self.work / "full", self.teacher, make_task(), self.train, full_settings, batch_size=128)
        seconds = time.perf_counter() - t
        full = TeacherCache(self.work / "full",
                            expected=cache_fingerprint(self.teacher, make_task(), self.train, full_settings))
        self.caches["full"] = full
        self.builds["full"] = {"build_s": seconds, "bytes": full.store.nbytes, "from": "teacher"}
        log(f"{self.name}: full cache ({views} views) built in {seconds:.1f} s, {full.store.nbytes} bytes")
        derived = {f"top{k}": CacheSettings(views=views, seed=0, topk=k) for k in TOPK}
        derived |= {"float16": CacheSettings(views=views, seed=0, dtype="float16"),
                    "bfloat16": CacheSettings(views=views, seed=0, dtype="bfloat16")}
        for label, settings in derived.items():
            t = time.perf_counter()
            build_teacher_cache(self.work / label, full, make_task(), self.train, settings, batch_size=128)
            seconds = time.perf_counter() - t
            cache = TeacherCache(self.work / label,
                                 expected=cache_fingerprint(self.teacher, make_task(), self.train, settings))
            self.caches[label] = cache
            self.builds[label] = {"build_s": seconds, "bytes": cache.store.nbytes, "from": "full cache"}

    def module(self, arm: str, seed: int = 0) -> DistillModule:
        if arm == "student":
            return DistillModule(self.student(seed), kd_methods(True), None, make_task())
        if arm == "online":
            return DistillModule(self.student(seed), kd_methods(False), FrozenTeacher(self.teacher), make_task())
        cache = self.caches[arm.removeprefix("cached-")]
        return DistillModule(self.student(seed), kd_methods(False), cache, make_task(cache))


def run(module: DistillModule, train: Any, evald: Any | None, epochs: int, run_dir: Path,
        seed: int = 0) -> dict[str, Any]:
    """Train; the summary's history gets each epoch's CPU time of this process (``epoch_cpu``) beside the
    trainer's wall-clock ``epoch_time``: on a shared machine the CPU time is far less disturbed by other jobs."""
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, weight_decay=5e-4, schedule="cosine", progress=False,
                      log_every=1000, eval_every=1000, seed=seed, cpu=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(module, train, evald, cfg, run_dir)
    marks: dict[str, float] = {}
    cpu: list[float] = []
    micro_batches = trainer._micro_batches

    def timed_micro_batches(epoch: int, opt_step: int):  # the epoch's first batch starts its clock
        if opt_step == 0:
            marks["start"] = time.process_time()
        return micro_batches(epoch, opt_step)

    trainer._micro_batches = timed_micro_batches  # type: ignore[method-assign]
    trainer.callbacks.append(lambda record: cpu.append(time.process_time() - marks["start"]))
    summary = trainer.fit(resume=False)
    for record, seconds in zip(summary["history"], cpu):
        record["epoch_cpu"] = seconds
    return summary


def storage_error(pair: Pair) -> dict[str, Any]:
    """Max |logit error| and the relative change of the KD loss (T = 4) of half-precision caches."""
    full = pair.caches["full"]
    n = full.store.num_examples
    idx = torch.arange(n)
    out = {}
    ref = full.store.get(idx, torch.zeros(n, dtype=torch.long), ["logits"])["logits"].float()
    torch.manual_seed(1)
    student = torch.randn_like(ref)  # a stand-in student distribution for the KD-loss comparison

    def kd(teacher: torch.Tensor) -> float:
        lp_s = torch.log_softmax(student / 4, -1)
        lp_t = torch.log_softmax(teacher / 4, -1)
        return float((lp_t.exp() * (lp_t - lp_s)).sum(-1).mean())

    for label in ("float16", "bfloat16"):
        got = pair.caches[label].store.get(idx, torch.zeros(n, dtype=torch.long), ["logits"])["logits"].float()
        out[label] = {"max_abs_logit_error": float((got - ref).abs().max()),
                      "kd_loss_rel_change": abs(kd(got) - kd(ref)) / kd(ref),
                      "bytes": pair.caches[label].store.nbytes, "bytes_float32": full.store.nbytes}
    return out


def write_md(results: dict[str, Any], path: Path) -> None:
    a = results["args"]
    lines = ["# Teacher cache speed", "",
             f"Command: `{results['command']}` ({results['host']}; CPU, batch 64, "
             f"{a['repeats']} interleaved repeats; ratios are medians over repeats of arm / student-alone epoch time "
             "measured in the same repeat). CPU time is this process's CPU time over the epoch (one thread), which "
             "other jobs on the shared machine disturb far less than the wall-clock time, also given.", ""]
    for pname, p in results["pairs"].items():
        lines += [f"## {pname}: {p['description']}", "",
                  f"Teacher forward {p['teacher_forward_ms']:.0f} ms vs student forward "
                  f"{p['student_forward_ms']:.0f} ms "
                  f"per batch of 64 (teacher/student = {p['teacher_forward_ms'] / p['student_forward_ms']:.1f}x); "
                  f"{p['train_examples']} training images, {p['views']} stored view(s) per image.", "",
                  "| arm | CPU s / epoch | / student alone (CPU) | range over repeats | / online KD (CPU) "
                  "| wall s / epoch | / student alone (wall) |", "|---|---:|---:|---:|---:|---:|---:|"]
        base = p["timing"].get("student", {}).get("epoch_cpu_s", [])
        for arm, t in p["timing"].items():
            if not t["epoch_s"] or t.get("ratio_vs_online_cpu") is None:
                continue
            ratios = [x / b for x, b in zip(t["epoch_cpu_s"], base)]
            lines.append(f"| {arm} | {statistics.median(t['epoch_cpu_s']):.2f} | {t['ratio_vs_student_cpu']:.3f} | "
                         f"{min(ratios):.2f}-{max(ratios):.2f} | {t['ratio_vs_online_cpu']:.3f} | "
                         f"{statistics.median(t['epoch_s']):.2f} | {t['ratio_vs_student']:.3f} |")
        lines += ["", "| cache | built from | build time (s) | size on disk |", "|---|---|---:|---:|"]
        for label, b in p["builds"].items():
            lines.append(f"| {label} | {b['from']} | {b['build_s']:.1f} | {b['bytes'] / 1024:.0f} KiB |")
        lines.append("")
    acc = results.get("accuracy")
    if acc:
        lines += [f"## Accuracy after the same short schedule (r56->r20, {acc['epochs']} epochs, "
                  f"{acc['train_examples']} training images, {acc['test_examples']} test images, "
                  f"{acc.get('seeds', 1)} seed(s))", "",
                  "| arm | test accuracy (mean) | sd over seeds | per seed |", "|---|---:|---:|---|"]
        for arm, r in acc["arms"].items():
            per_seed = ", ".join(f"{x:.3f}" for x in r.get("per_seed", [r["accuracy"]]))
            lines.append(f"| {arm} | {r['accuracy']:.3f} | {r.get('std', 0.0):.3f} | {per_seed} |")
        lines.append("")
    err = results.get("storage_error")
    if err:
        lines += ["## Half-precision storage (r56->r20 full-logits cache, view 0 of every image)", "",
                  "| dtype | max abs logit error | KD loss (T=4) relative change | size vs float32 |",
                  "|---|---:|---:|---:|"]
        for label, e in err.items():
            lines.append(f"| {label} | {e['max_abs_logit_error']:.2e} | {e['kd_loss_rel_change']:.1e} | "
                         f"{e['bytes'] / e['bytes_float32']:.2f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--views", type=int, default=4, help="stored views per image (pretrained pair)")
    ap.add_argument("--big-views", type=int, default=1, help="stored views per image (expensive pair)")
    ap.add_argument("--per-class", type=int, default=50, help="training images per class (pretrained pair)")
    ap.add_argument("--big-per-class", type=int, default=32, help="training images per class (expensive pair)")
    ap.add_argument("--accuracy-epochs", type=int, default=6)
    ap.add_argument("--accuracy-seeds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="tiny smoke run into a temp folder")
    ap.add_argument("--report-only", action="store_true", help="rewrite speed.md from the existing speed.json")
    args = ap.parse_args()
    if args.report_only:
        write_md(json.loads((Path(args.out) / "speed.json").read_text()), Path(args.out) / "speed.md")
        return 0
    if args.quick:
        args.repeats, args.views, args.big_views, args.per_class, args.big_per_class = 1, 2, 1, 7, 7
        args.accuracy_epochs, args.accuracy_seeds = 1, 2
        args.out = tempfile.mkdtemp(prefix="speed-quick-")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="distill-speed-"))
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    demo = ASSETS / "cifar10_demo.tar.gz"
    train_all, test = load_images(demo, split="train"), load_images(demo, split="test")
    if args.quick:
        test = test.balanced_subset(5, 0)
    r56 = build_model("resnet56", num_classes=10)
    load_weights_into(r56, ASSETS / "resnet56_cifar10_jpeg.safetensors")
    torch.manual_seed(0)
    big = build_model("resnet32x4", num_classes=10)
    pairs = {
        "r56->r20": Pair("r56->r20", r56, "resnet20", train_all.balanced_subset(args.per_class, 0), args, work),
        "r32x4->wrn16-1": Pair("r32x4->wrn16-1", big, "wrn_16_1", train_all.balanced_subset(args.big_per_class, 1),
                               args, work),
    }
    descriptions = {"r56->r20": "pretrained ResNet-56 -> ResNet-20 (CIFAR-10 demo images)",
                    "r32x4->wrn16-1": "ResNet-32x4 (random init, timing only) -> WRN-16-1"}
    results: dict[str, Any] = {"command": "python benchmarks/speed.py" + (" --quick" if args.quick else ""),
                               "host": f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                                       "shared 2-core machine",
                               "args": vars(args), "pairs": {}}
    views = {"r56->r20": args.views, "r32x4->wrn16-1": args.big_views}
    for name, pair in pairs.items():
        pair.build_caches(log, views[name])
        results["pairs"][name] = {"views": views[name],
            "description": descriptions[name], "train_examples": len(pair.train), "builds": pair.builds,
            "teacher_forward_ms": forward_ms(pair.teacher), "student_forward_ms": forward_ms(pair.student()),
            "timing": {}}
    results["storage_error"] = storage_error(pairs["r56->r20"])
    arms = ["student", "online", "cached-full", *[f"cached-top{k}" for k in TOPK]]

    def save() -> None:
        for name in pairs:
            timing = results["pairs"][name]["timing"]
            for arm in arms:
                t = timing.get(arm)
                if not t or not t["epoch_s"]:
                    continue
                for key, suffix in (("epoch_s", ""), ("epoch_cpu_s", "_cpu")):
                    base, onl = timing["student"][key], timing.get("online", {}).get(key, [])
                    t["ratio_vs_student" + suffix] = statistics.median(x / b for x, b in zip(t[key], base))
                    t["ratio_vs_online" + suffix] = (statistics.median(x / o for x, o in zip(t[key], onl))
                                                     if onl else None)
        write_json(out / "speed.json", results)
        write_md(results, out / "speed.md")

    for name, pair in pairs.items():  # untimed warm-up (first-call allocations, caches of the allocator)
        run(pair.module("cached-full"), pair.train, None, 1, work / "runs" / name / "warmup")
        log(f"{name}: warm-up epoch done")
    for rep in range(args.repeats):
        for name, pair in pairs.items():
            order = arms[rep % len(arms):] + arms[:rep % len(arms)]
            for arm in order:
                summary = run(pair.module(arm), pair.train, None, 1, work / "runs" / name / arm)
                seconds, cpu = summary["history"][0]["epoch_time"], summary["history"][0]["epoch_cpu"]
                t = results["pairs"][name]["timing"].setdefault(arm, {"epoch_s": [], "epoch_cpu_s": []})
                t["epoch_s"].append(seconds)
                t["epoch_cpu_s"].append(cpu)
                log(f"repeat {rep + 1}/{args.repeats} {name} {arm}: {seconds:.2f} s wall, {cpu:.2f} s CPU")
            save()

    pair = pairs["r56->r20"]
    acc_arms = ["student", "cached-full", *[f"cached-top{k}" for k in TOPK]]
    results["accuracy"] = {"epochs": args.accuracy_epochs, "train_examples": len(pair.train),
                           "test_examples": len(test), "arms": {}}
    results["accuracy"]["seeds"] = args.accuracy_seeds
    for seed in range(args.accuracy_seeds):
        for arm in acc_arms:
            module = pair.module(arm, seed)
            run(module, pair.train, None, args.accuracy_epochs, work / "acc" / arm, seed=seed)
            metrics = evaluate_model(module.student, make_task(), test, 256, "cpu")
            entry = results["accuracy"]["arms"].setdefault(arm, {"per_seed": []})
            entry["per_seed"].append(metrics["accuracy"])
            entry["accuracy"] = statistics.mean(entry["per_seed"])
            entry["std"] = statistics.stdev(entry["per_seed"]) if len(entry["per_seed"]) > 1 else 0.0
            log(f"accuracy seed {seed} {arm}: {metrics['accuracy']:.3f}")
            save()
    teacher_acc = evaluate_model(pair.teacher, make_task(), test, 256, "cpu")["accuracy"]
    results["accuracy"]["arms"]["(teacher itself)"] = {"accuracy": teacher_acc, "per_seed": [teacher_acc], "std": 0.0}
    results["wall_s"] = time.perf_counter() - started
    save()
    shutil.rmtree(work, ignore_errors=True)
    log(f"done: {out / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
