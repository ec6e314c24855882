"""MEAL V2's teacher measured on a named evaluation set: each pretrained akamaster ResNet (20/32/44/56, not
fine-tuned on the JPEGs) and the ensemble the ``mealv2`` arm distils from (their mean probabilities).

The teacher is built from the catalogue recipe ``configs/cifar10/mealv2.yaml`` by the same builder the arm uses
(same members, weights, normalisation and evaluation transform); only the data is replaced. Every member runs
once over the evaluation images and the ensemble is scored from the same logits, so one pass costs what the four
members' forward passes cost (about 1.5 CPU minutes for 1,000 images on one thread).

    OMP_NUM_THREADS=1 python benchmarks/mealv2_teacher.py           # the 1,000 test images shipped in the package
    OMP_NUM_THREADS=1 python benchmarks/mealv2_teacher.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --name mealv2_teacher_10k                                   # the 10,000 test images the catalogue scores

Output: ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.config import load_raw, parse_config, set_override
from distill.experiment import build_experiment
from distill.train.evaluate import eval_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "cifar10" / "mealv2.yaml"
SHIPPED = "builtin:cifar10_demo.tar.gz"


def teacher_experiment(data: str, shared: Path, per_class: int | None):
    raw = load_raw(RECIPE)
    # only the evaluation images matter: one training image per class, a batch that fits them
    overrides = [f"data.train={data}", f"data.eval={data}", "data.train_per_class=1", "train.batch_size=10",
                 "data.cache_dir=null", f"data.eval_per_class={per_class if per_class else 'null'}"]
    for i, member in enumerate(raw["teacher"]["ensemble"]):
        weights = shared / "models" / "resnet-cifar10" / Path(member["weights"]).name
        overrides.append(f"teacher.ensemble.{i}.weights={weights}")
    for assignment in overrides:
        set_override(raw, assignment)
    return raw, build_experiment(parse_config(raw, base_dir=RECIPE.parent))


@torch.no_grad()
def measure(exp: Any, archs: list[str], batch_size: int = 250) -> dict[str, Any]:
    models = [m.model.eval() for m in exp.teacher.members]
    correct = torch.zeros(len(models) + 1, dtype=torch.long)
    n = 0
    for batch in eval_batches(exp.task, exp.eval_data, batch_size):
        labels = batch.labels
        logits = [exp.task.forward(m, batch) for m in models]
        probs = torch.stack([z.softmax(-1) for z in logits]).mean(0)
        for i, z in enumerate([*logits, probs]):
            correct[i] += int((z.argmax(-1) == labels).sum())
        n += len(labels)
    acc = (correct.double() / n).tolist()
    return {"members": dict(zip(archs, acc[:-1])), "ensemble": acc[-1], "test_images": n}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# MEAL V2's teacher on {result['test_images']:,} test images", "",
             f"Command: `{command}`", "",
             f"Data: `{result['data']}` (split `{result['split']}`), the catalogue's evaluation transform; members "
             "not fine-tuned on the JPEGs; ensemble = mean of the members' probabilities (the `mealv2` arm's "
             "teacher, `configs/cifar10/mealv2.yaml`).", "",
             "| teacher | test accuracy (%) |", "|---|---|"]
    lines += [f"| {arch} | {100 * acc:.2f} |" for arch, acc in result["members"].items()]
    lines += [f"| ensemble (mean probabilities) | {100 * result['ensemble']:.2f} |", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=SHIPPED, help="a CIFAR-10 archive; its test split is scored")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="folder holding models/resnet-cifar10")
    p.add_argument("--per-class", type=int, default=None, help="score only this many test images per class")
    p.add_argument("--name", default="mealv2_teacher")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    raw, exp = teacher_experiment(args.data, args.shared.resolve(), args.per_class)
    archs = [m["arch"] for m in raw["teacher"]["ensemble"]]
    start = time.perf_counter()
    result = measure(exp, archs)
    result |= {"data": args.data, "split": exp.config.data.eval_split, "wall_time_s": time.perf_counter() - start,
               "members_weights": [Path(m["weights"]).name for m in raw["teacher"]["ensemble"]]}
    command = "python benchmarks/mealv2_teacher.py" + (f" --data {args.data}" if args.data != SHIPPED else "") + (
        f" --per-class {args.per_class}" if args.per_class else "") + (
        f" --name {args.name}" if args.name != "mealv2_teacher" else "")
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", result)
    (args.out / f"{args.name}.md").write_text(markdown(result, command))
    print(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
