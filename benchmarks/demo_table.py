"""``distill demo`` with its printed numbers kept as a result file: teacher, scratch-student and distilled-student
accuracy on the 1,000 shipped test images, and the wall time of each part, on one CPU thread.

    OMP_NUM_THREADS=1 python benchmarks/demo_table.py            # the default demo (10 epochs, seed 0): ~8 CPU min
    OMP_NUM_THREADS=1 python benchmarks/demo_table.py --epochs 1 --per-class 4 --out /tmp/demo   # a smoke run

Output: ``benchmarks/results/demo.{json,md}`` (run folders under ``benchmarks/work/demo``). Wall times depend on
the machine and its load; the accuracies on the seed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from distill.demo import DEFAULT_EPOCHS, run_demo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def markdown(result: dict[str, Any]) -> str:
    r = result["demo"]
    rows = [("teacher ResNet-56 (pretrained, fine-tuned on JPEG CIFAR-10)", r["teacher"], " (evaluation)"),
            ("student ResNet-20 from scratch (CE)", r["scratch"], ""),
            ("student ResNet-20 distilled (CE + FitNet hint on stage 2)", r["distilled"], "")]
    lines = ["# distill demo", "", f"Command: `{result['command']}`", "",
             f"Seed {r['seed']} (1 seed), {r['epochs']} epochs per student, {result['threads']} thread(s), "
             f"torch {result['torch']}, {result['machine']}; total {r['total_wall_time_s']:.0f} s.", "",
             f"| model | test accuracy ({result['test_images']:,} shipped test images) | wall time |", "|---|---|---|"]
    lines += [f"| {name} | {100 * part['accuracy']:.1f}% | {part['wall_time_s']:.0f} s{note} |"
              for name, part, note in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=None, help="fewer images per class (smoke runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "demo")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    demo = run_demo(args.work, epochs=args.epochs, seed=args.seed, per_class=args.per_class, progress=False)
    command = "python benchmarks/demo_table.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("epochs", args.epochs), ("seed", args.seed),
                                                     ("per_class", args.per_class), ("threads", args.threads))
        if v is not None and v != {"epochs": DEFAULT_EPOCHS, "seed": 0, "threads": 1}.get(k))
    result = {"command": command, "threads": args.threads, "torch": torch.__version__,
              "machine": f"{os.cpu_count()} CPU cores visible",
              # the shipped archive holds 100 test images per class; --per-class takes that many of them
              "test_images": 10 * (args.per_class or 100), "demo": demo}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "demo.json", result)
    (args.out / "demo.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
