"""``distill demo``: a real distillation on real data shipped with the package, in a few CPU minutes.

Teacher: the pretrained CIFAR-10 ResNet-56 of akamaster/pytorch_resnet_cifar10 (BSD-2-Clause, notice in
``assets/LICENSE-resnet-cifar10.txt``), fine-tuned on the JPEG re-encoding of CIFAR-10 (``benchmarks/``).
Data: a class-balanced subset of those JPEGs (250 training and 100 test images per class), shipped as a tar
archive of the image-folder layout. Student: a ResNet-20 from random initialisation, trained twice on the same
budget and seed, once on labels alone (scratch) and once with a FitNet hint from the teacher (CE + 100 x the
MSE between a learned 1x1-conv regression of the student's stage-2 features and the teacher's): on this small
data set feature hints transfer far more than softened logits (see the benchmark tables in benchmarks/README.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from distill.config import parse_config
from distill.experiment import build_experiment, evaluate_model

DEMO_DATA = "builtin:cifar10_demo.tar.gz"
DEMO_TEACHER = "builtin:resnet56_cifar10_jpeg.safetensors"
DEFAULT_EPOCHS = 10


def demo_config(out: Path, arm: str, epochs: int, seed: int, per_class: int | None = None) -> dict[str, Any]:
    methods: list[dict[str, Any]] = [{"name": "ce", "weight": 1.0}]
    if arm == "distilled":
        methods.append({"name": "fitnet", "weight": 100.0, "student": "f2", "teacher": "f2"})
    return {
        "output_dir": str(out / arm),
        "seed": seed,
        "data": {"train": DEMO_DATA, "eval": DEMO_DATA, "normalize": "imagenet", "train_per_class": per_class,
                 "eval_per_class": per_class, "augment": {"crop_padding": 4, "flip": True}},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet56", "weights": DEMO_TEACHER},
        "methods": methods,
        "train": {"epochs": epochs, "batch_size": 64 if per_class is None else min(64, 5 * per_class),
                  "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                  "eval_every": 1, "log_every": 5},
    }


def run_demo(out: Path, epochs: int | None = None, seed: int = 0, per_class: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run both arms and print the comparison; ``per_class`` shrinks the data (for smoke tests)."""
    from rich.console import Console
    from rich.table import Table

    from distill.report.plots import plot_runs

    console = Console()
    epochs = epochs or DEFAULT_EPOCHS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"epochs": epochs, "seed": seed}
    start = time.perf_counter()
    for arm in ("scratch", "distilled"):
        raw = demo_config(out, arm, epochs, seed, per_class)
        raw["train"]["progress"] = progress
        (out / f"{arm}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        exp = build_experiment(parse_config(raw))
        if arm == "scratch":
            console.print(f"[bold]data[/]: {len(exp.train_data)} training / {len(exp.eval_data)} test images "
                          f"from {exp.train_data.source}")
            t0 = time.perf_counter()
            teacher_metrics = evaluate_model(exp.teacher.model, exp.task, exp.eval_data)
            results["teacher"] = {"accuracy": teacher_metrics["accuracy"], "wall_time_s": time.perf_counter() - t0}
            console.print(f"[bold]teacher[/] resnet56: test accuracy {100 * teacher_metrics['accuracy']:.1f}%")
        console.print(f"[bold]{'student from scratch' if arm == 'scratch' else 'distilled student'}[/] "
                      f"(resnet20, {epochs} epochs)")
        summary = exp.fit(resume=False)
        results[arm] = {"accuracy": summary["final"]["accuracy"], "wall_time_s": summary["wall_time_s"],
                        "methods": raw["methods"]}
    results["total_wall_time_s"] = time.perf_counter() - start
    plot = plot_runs({"scratch (CE)": out / "scratch", "distilled (CE + FitNet hint)": out / "distilled"},
                     out / "curves.png", title="distill demo: ResNet-56 -> ResNet-20 on 2,500 CIFAR-10 images")
    (out / "results.json").write_text(json.dumps(results, indent=2))

    table = Table(title="distill demo")
    for col in ("model", "test accuracy", "wall time"):
        table.add_column(col)
    table.add_row("teacher resnet56 (pretrained, fine-tuned)", f"{100 * results['teacher']['accuracy']:.1f}%",
                  f"{results['teacher']['wall_time_s']:.0f}s (eval)")
    table.add_row("student resnet20, scratch", f"{100 * results['scratch']['accuracy']:.1f}%",
                  f"{results['scratch']['wall_time_s']:.0f}s")
    table.add_row("student resnet20, distilled (CE + FitNet)", f"{100 * results['distilled']['accuracy']:.1f}%",
                  f"{results['distilled']['wall_time_s']:.0f}s")
    console.print(table)
    gain = 100 * (results["distilled"]["accuracy"] - results["scratch"]["accuracy"])
    console.print(f"distillation gain: {gain:+.1f} points; total {results['total_wall_time_s']:.0f}s; "
                  f"run folder {out} (logs, TensorBoard, checkpoints, {plot.name})")
    return results
