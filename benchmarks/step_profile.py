"""Benchmark: where one CPU training step of ResNet-56 -> ResNet-20 KD goes, and what the speed options buy.

    python benchmarks/step_profile.py                  # writes benchmarks/results/step_profile.{json,md}
    python benchmarks/step_profile.py --quick          # a smoke run (fewer repeats), written to a temp folder

Every arm is the same KD step (CE 0.1 + KD 0.9 at T = 4, SGD, batch 64, the shipped ResNet-56 teacher, a ResNet-20
student, the shipped CIFAR-10 demo images with crop+flip augmentation), on one thread. Arms:

- ``baseline``: fp32, NCHW, teacher under ``torch.no_grad``, eager student;
- ``inference_mode``: the teacher under ``torch.inference_mode`` (``train.teacher_inference_mode``);
- ``channels_last``: inputs and both models in channels-last memory format (``data.channels_last``);
- ``bf16``: bf16 autocast around the step (``train.mixed_precision: bf16``);
- ``compile``: ``torch.compile`` of the student (``train.compile_student``).

The machine is shared, so timings are noisy: arms are run interleaved (round robin), each round timing a few
steps of every arm, and the reported figure is the median over rounds of the ratio arm / baseline *in the same
round*. The data path (fetch + augmentation + normalisation of a batch) is timed on its own in each round. The
accuracy side of bf16 is measured on the teacher (test accuracy on 500 of the demo test images under fp32 and
bf16 autocast) and on one step (relative error of the loss and of the student's gradient). A torch.profiler
table of one step of the baseline and of the fastest arm is written to the Markdown file.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

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

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "distill" / "assets"
ARMS = ["baseline", "inference_mode", "channels_last", "bf16", "compile"]


class Arm:
    """One configuration: its own student copy, optimiser, task and step function."""

    def __init__(self, name: str, teacher_state: dict[str, torch.Tensor], batch_size: int):
        self.name = name
        features = set(name.split("+"))  # e.g. "channels_last+compile" combines two options
        unknown = features - set(ARMS)
        if unknown:
            raise SystemExit(f"unknown arm option(s) {sorted(unknown)}; allowed: {ARMS} joined with '+'")
        self.features = features
        channels_last = "channels_last" in features
        self.task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4), channels_last=channels_last)
        torch.manual_seed(0)
        student = build_model("resnet20", num_classes=10)
        teacher = build_model("resnet56", num_classes=10)
        teacher.load_state_dict(teacher_state)
        if channels_last:
            student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        methods = Composite({"ce": CrossEntropy(), "kd": KD(temperature=4.0)}, {"ce": 0.1, "kd": 0.9})
        self.module = DistillModule(student, methods, FrozenTeacher(teacher), self.task)
        self.module.teacher_inference_mode = "inference_mode" in features
        self.batch_size = batch_size
        self.autocast: Callable[[], contextlib.AbstractContextManager] = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "bf16" in features else contextlib.nullcontext)
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, data: Any) -> None:
        batch = self.batch(data, 0)
        self.module.setup(batch)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        if "compile" in self.features:
            self.module.student.compile()

    def batch(self, data: Any, step: int):
        n = len(data)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(step))[: self.batch_size]
        return self.task.prepare(self.task.fetch(data, idx), train=True,
                                 generator=torch.Generator().manual_seed(10_000 + step))

    def step(self, batch) -> float:
        assert self.optimizer is not None
        with self.autocast():
            loss, _, _ = self.module(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)


def time_steps(arm: Arm, data: Any, first: int, count: int) -> float:
    """Seconds per step (data preparation included) over ``count`` steps."""
    start = time.perf_counter()
    for s in range(first, first + count):
        arm.step(arm.batch(data, s))
    return (time.perf_counter() - start) / count


def time_data(task: ImageClassification, data: Any, batch_size: int, count: int) -> dict[str, float]:
    """Seconds per batch of: index fetch, augmentation, normalisation."""
    fetch = aug = norm = 0.0
    for s in range(count):
        g = torch.Generator().manual_seed(s)
        t0 = time.perf_counter()
        idx = torch.randperm(len(data), generator=g)[:batch_size]
        raw = task.fetch(data, idx)
        t1 = time.perf_counter()
        params = task.augment.sample(batch_size, g)
        images = task.augment.apply(raw.inputs, params)
        t2 = time.perf_counter()
        task.normalize(images)
        t3 = time.perf_counter()
        fetch, aug, norm = fetch + t1 - t0, aug + t2 - t1, norm + t3 - t2
    return {"fetch_s": fetch / count, "augment_s": aug / count, "normalize_s": norm / count}


def bf16_accuracy(teacher_state: dict[str, torch.Tensor], test: Any, train: Any) -> dict[str, float]:
    """Teacher test accuracy under fp32 and bf16 autocast, and one step's loss/gradient error under bf16."""
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, None)
    teacher = build_model("resnet56", num_classes=10)
    teacher.load_state_dict(teacher_state)
    fp32 = evaluate_model(teacher, task, test, 250, "cpu")
    bf16 = evaluate_model(teacher, task, test, 250, "cpu", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    out = {"teacher_acc_fp32": fp32["accuracy"], "teacher_acc_bf16": bf16["accuracy"], "test_images": len(test)}
    arm32, arm16 = Arm("baseline", teacher_state, 64), Arm("bf16", teacher_state, 64)
    arm32.setup(train)
    arm16.setup(train)
    batch = arm32.batch(train, 1)
    grads = []
    for arm in (arm32, arm16):
        with arm.autocast():
            loss, _, _ = arm.module(batch)
        loss.backward()
        grads.append((float(loss), torch.cat([p.grad.flatten() for p in arm.module.student.parameters()])))
    (l32, g32), (l16, g16) = grads
    out["loss_rel_error"] = abs(l16 - l32) / abs(l32)
    out["grad_rel_error"] = float((g16 - g32).norm() / g32.norm())
    out["grad_cosine"] = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    return out


def profile_table(arm: Arm, data: Any, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    arm.step(arm.batch(data, 900))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        arm.step(arm.batch(data, 901))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arm per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="step_profile", help="results file stem")
    parser.add_argument("--skip-bf16-accuracy", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 2, 1
        args.out = Path(tempfile.mkdtemp(prefix="step_profile_"))
    torch.set_num_threads(args.threads)
    names = args.arms.split(",")
    if names[0] != "baseline":
        raise SystemExit("--arms must start with baseline (ratios are taken against it)")
    train = load_images(ASSETS / "cifar10_demo.tar.gz", split="train")
    test = load_images(ASSETS / "cifar10_demo.tar.gz", split="test")
    teacher = build_model("resnet56", num_classes=10)
    load_weights_into(teacher, ASSETS / "resnet56_cifar10_jpeg.safetensors")
    teacher_state = teacher.state_dict()

    arms: dict[str, Arm] = {}
    compile_s = None
    failed: dict[str, str] = {}
    for name in names:
        arm = Arm(name, teacher_state, args.batch_size)
        t0 = time.perf_counter()
        try:
            arm.setup(train)
            arm.step(arm.batch(train, 0))  # warm-up (for "compile": the compilation itself)
        except Exception as e:  # an option broken on this machine is reported, not fatal
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"{name}: FAILED {failed[name]}", file=sys.stderr, flush=True)
            continue
        if "compile" in arm.features:
            compile_s = time.perf_counter() - t0
        arms[name] = arm
        print(f"{name}: ready", file=sys.stderr, flush=True)
    names = [n for n in names if n in arms]

    seconds: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    data_times: list[dict[str, float]] = []
    step = 1
    for r in range(args.rounds):
        this = {}
        for name in names:
            # bf16 without native bf16 units is very slow: one step per round is enough to see it
            this[name] = time_steps(arms[name], train, step, 1 if "bf16" in arms[name].features else args.steps)
            seconds[name].append(this[name])
        step += args.steps
        for name in names:
            ratios[name].append(this[name] / this["baseline"])
        data_times.append(time_data(arms["baseline"].task, train, args.batch_size, args.steps * 3))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {this[n]:.3f}s" for n in names),
              file=sys.stderr, flush=True)

    data = {k: statistics.median(d[k] for d in data_times) for k in data_times[0]}
    base = statistics.median(seconds["baseline"])
    result: dict[str, Any] = {
        "command": " ".join(["python benchmarks/step_profile.py", *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__, "threads": args.threads, "batch_size": args.batch_size,
        "rounds": args.rounds, "steps_per_round": args.steps,
        "arms": {n: {"median_step_s": statistics.median(seconds[n]), "median_ratio": statistics.median(ratios[n]),
                     "min_ratio": min(ratios[n]), "max_ratio": max(ratios[n])} for n in names},
        "compile_first_step_s": compile_s,
        "failed_arms": failed,
        "data_path": {**data, "share_of_baseline_step": sum(data.values()) / base},
    }
    if "bf16" in names and not args.skip_bf16_accuracy:  # (slow here: a balanced 500 of the 1,000 test images)
        result["bf16_accuracy"] = bf16_accuracy(teacher_state, test.balanced_subset(50, 0), train)
    fastest = min(names, key=lambda n: result["arms"][n]["median_ratio"])
    result["fastest"] = fastest
    profiles = {"baseline": profile_table(arms["baseline"], train)}
    if fastest != "baseline":
        profiles[fastest] = profile_table(arms[fastest], train)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", result)
    (args.out / f"{args.name}.md").write_text(markdown(result, profiles))
    print((args.out / f"{args.name}.md").read_text())
    return 0


def markdown(result: dict[str, Any], profiles: dict[str, str]) -> str:
    lines = [
        "# One training step, ResNet-56 -> ResNet-20 KD on CPU",
        "",
        f"`{result['command']}` (torch {result['torch']}, {result['threads']} thread(s), batch "
        f"{result['batch_size']}, {result['rounds']} interleaved rounds x {result['steps_per_round']} steps per arm; "
        "ratio = arm / baseline in the same round, median over rounds, min-max in brackets).",
        "",
        "| arm | median step (s) | ratio to baseline | range |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, a in result["arms"].items():
        lines.append(f"| {name} | {a['median_step_s']:.3f} | {a['median_ratio']:.3f} | "
                     f"{a['min_ratio']:.3f}-{a['max_ratio']:.3f} |")
    d = result["data_path"]
    lines += ["", f"Data path per batch (median): fetch {d['fetch_s'] * 1e3:.2f} ms, augmentation "
              f"{d['augment_s'] * 1e3:.2f} ms, normalisation {d['normalize_s'] * 1e3:.2f} ms: "
              f"{100 * d['share_of_baseline_step']:.1f}% of a baseline step."]
    if result.get("compile_first_step_s") is not None:
        lines.append(f"First compiled step (compilation included): {result['compile_first_step_s']:.1f} s.")
    if "bf16_accuracy" in result:
        b = result["bf16_accuracy"]
        lines += ["", f"bf16 autocast accuracy: teacher test accuracy ({b['test_images']} demo test images) "
                  f"{100 * b['teacher_acc_fp32']:.1f}% fp32 vs {100 * b['teacher_acc_bf16']:.1f}% bf16; one step's "
                  f"loss relative error {b['loss_rel_error']:.2e}, student-gradient relative error "
                  f"{b['grad_rel_error']:.2e} (cosine {b['grad_cosine']:.4f})."]
    for name, why in result.get("failed_arms", {}).items():
        lines.append(f"Arm {name} failed on this machine: {why}")
    for name, table in profiles.items():
        lines += ["", f"## torch.profiler, one step: {name}", "", "```", table.rstrip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
