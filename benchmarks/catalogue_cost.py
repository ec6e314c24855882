"""Benchmark: the training cost of every catalogue arm, relative to plain cross-entropy, in one process.

    python benchmarks/catalogue_cost.py                          # ResNet-56 -> ResNet-20
    python benchmarks/catalogue_cost.py --student mobilenetv2    # the heterogeneous pair

The accuracy runs of ``cifar10_kd.py --arms all`` take hours, and this machine's load changes under them, so
their seconds per epoch are not comparable between arms. Here every arm trains the same few steps on the same
images (the accuracy runs' configuration, batch 64, ``--per-class`` images per class) in interleaved rounds
(arms in a new random order each round). Each arm's cost is its fastest round (the least disturbed by other
jobs on a shared machine; every round is kept in the JSON), and the table gives its ratio to the scratch arm's
fastest round in the same run. Only main-stage steps of the last epoch are timed: one-off work (teacher passes
that fill a bank or fit class means, initialisation stages, DHO's combiner fit after an epoch, evaluation) is
not. ``s / epoch`` extrapolates to the accuracy runs' epoch (5,000 images, 79 steps; DHO's epoch has twice the
images).

Writes ``benchmarks/results/<name>.json`` and ``.md``; ``cifar10_kd.py`` puts the ratios in its table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from distill.config import load_raw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_kd as bench  # noqa: E402
from portable import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def time_arm(args: argparse.Namespace, arm: str, teacher: Path, tmp: Path) -> dict[str, float]:
    """Train ``arm`` for ``args.epochs`` short epochs; seconds per main-stage step in the last one."""
    exp, extra = bench.arm_experiment(args, arm, 0, teacher, tmp / arm, data={"eval_per_class": 1},
                                      train={"eval_every": args.epochs, "checkpoint_every": 0})
    summary = exp.fit(resume=False)
    last = [h for h in summary["history"] if h["stage"] == "main"][-1]
    steps = exp.trainer.steps_per_epoch
    return {"step_s": last["epoch_time"] / steps, "steps_per_epoch": steps,
            "train_images": extra.get("train_images", len(exp.trainer.train_data))}


def summarise(rounds: dict[str, list[float]], images: dict[str, int], per_class: int,
              full_per_class: int) -> dict[str, dict[str, Any]]:
    """Per arm: its fastest step time over the rounds, the ratios to scratch's and KD's fastest, and the implied
    seconds per epoch of the accuracy runs."""
    full_steps = math.ceil(10 * full_per_class / 64)
    best = {arm: min(ts) for arm, ts in rounds.items()}
    rows = {}
    for arm, ts in rounds.items():
        scale = images[arm] / (10 * per_class)  # DHO adds unlabelled images to its epoch
        rows[arm] = {"step_s": best[arm], "vs_scratch": best[arm] / best["scratch"], "vs_kd": best[arm] / best["kd"],
                     "epoch_s": best[arm] * math.ceil(full_steps * scale), "rounds_step_s": ts,
                     "train_images": images[arm]}
    return rows


def write_table(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    rows = result["arms"]
    lines = [
        f"Training cost per step on {result['student']} (teacher ResNet-56), batch 64, {result['threads']} CPU "
        f"thread(s): the fastest of {result['rounds']} interleaved rounds (every round in the JSON), ratios to "
        f"scratch and KD measured in the same run. s / epoch: that step time times the accuracy runs' steps per "
        f"epoch ({args.full_per_class} images per class; DHO's epoch has twice the images).",
        "",
        "| method | ms / step | x scratch | x KD | s / epoch (extrapolated) |",
        "|---|---|---|---|---|",
    ]
    for arm, r in rows.items():
        lines.append(f"| {arm} | {1000 * r['step_s']:.0f} | {r['vs_scratch']:.2f} | {r['vs_kd']:.2f} | "
                     f"{r['epoch_s']:.1f} |")
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work", help="holds the decoded-image cache")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--teacher", type=Path, default=REPO / "src" / "distill" / "assets"
                   / "resnet56_cifar10_jpeg.safetensors")
    p.add_argument("--student", default="resnet20", help="picks the pair's recipe folder (resnet20, mobilenetv2)")
    p.add_argument("--configs", type=Path, default=None, help="the recipe folder (default: the student's pair)")
    p.add_argument("--arms", nargs="+", default=["all"], choices=["all", *bench.CATALOGUE])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="short epochs per timing run (the last one is timed)")
    p.add_argument("--per-class", type=int, default=96, help="images per class of a timing run (96: 15 steps)")
    p.add_argument("--full-per-class", type=int, default=500, help="the accuracy runs' images per class")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--report-only", action="store_true", help="rewrite the table from the JSON of --name")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.data = args.data or args.shared / "data" / "cifar10-jpeg.tar.gz"
    if not args.data.exists():
        print(f"data not found: {args.data} (pass --data or put ../shared beside the repo)", file=sys.stderr)
        return 2
    args.quick = False
    error = bench.resolve_pair(args)
    if error:
        print(error, file=sys.stderr)
        return 2
    args.name = args.name or f"catalogue_cost_{args.student}"
    names = list(bench.CATALOGUE) if "all" in args.arms else list(dict.fromkeys(["scratch", "kd", *args.arms]))
    skipped = bench.inapplicable_arms(args.student)
    names = [a for a in names if a not in skipped and a in args.arms_files]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    if args.report_only:
        result = json.loads(path.read_text())
        rounds = {a: r["rounds_step_s"] for a, r in result["arms"].items()}
        n = result["per_class"]  # files written before train_images was recorded: the protocol's counts
        images = {a: r.get("train_images", 10 * (n + bench.extra_per_class(load_raw(args.arms_files[a]), n)[1]))
                  for a, r in result["arms"].items()}
        result["arms"] = summarise(rounds, images, result["per_class"], args.full_per_class)
        write_json(path, result)
        print(write_table(args, result).read_text())
        return 0
    times: dict[str, list[float]] = {a: [] for a in names}
    images: dict[str, int] = {}
    order = random.Random(0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distill-cost-") as tmp:
        for rnd in range(args.rounds):
            shuffled = names[:]
            order.shuffle(shuffled)
            for arm in shuffled:
                r = time_arm(args, arm, args.teacher, Path(tmp) / f"r{rnd}")
                times[arm].append(r["step_s"])
                images[arm] = r["train_images"]
                print(f"round {rnd} {arm:9s} {1000 * r['step_s']:.0f} ms/step", flush=True)
    result = {"student": args.student, "threads": torch.get_num_threads(), "rounds": args.rounds,
              "per_class": args.per_class, "skipped": skipped,
              "arms": summarise(times, images, args.per_class, args.full_per_class),
              "wall_time_s": time.perf_counter() - start}
    write_json(path, result)
    print(write_table(args, result).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
