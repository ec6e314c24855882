"""Demonstration of OFA-KD (../shared/methods/dense.md, row 29): the CNN teacher ResNet-56 distilled into a ViT.

    python benchmarks/vit_ofa.py                          # 4 arms x 3 seeds, writes benchmarks/results/vit_ofa.*
    python benchmarks/vit_ofa.py --only scratch kd ofa    # a part of the arms (the table still covers all)
    python benchmarks/vit_ofa.py --student vit_tiny --name vit_ofa_tiny   # the spec's ViT 128 x 8 (GPU-sized)
    python benchmarks/vit_ofa.py --report-only            # rewrite the table from the JSON
    python benchmarks/vit_ofa.py --configs configs/cifar10_rows --student resnet20 --margin -0.3 \
        --arms scratch kd ofa --name ofa_resnet20        # the homogeneous sanity pair (catalogue schedule)

Arms are the recipes of ``configs/cifar10_vit/`` (scratch: CE with label smoothing 0.1; kd: + KD at T = 4;
ofa: OFA-KD eps = 1; ofa_e15: eps = 1.5), all with the same data (the catalogue's 5,000 JPEG training images, the
10,000 test images), schedule, steps and teacher (the fine-tuned ResNet-56 shipped in the package). Each finished
run is appended to the JSON at once, so an interrupted benchmark resumes where it stopped (a run resumes from its
last epoch checkpoint). Verdict (the spec's "works if"): OFA beats KD by 0.5 points or more (mean paired difference
over the seeds) on this CNN -> ViT pair.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (  # noqa: E402
    Sweep,
    arm_parser,
    discover_arms,
    format_diff,
    format_mean,
    load_recipe,
    previous_runs,
    still_to_run,
    summarise,
)
from verdicts_families import verdict_text, vit_ofa_verdicts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "cifar10_vit"
ORDER = ["scratch", "kd", "ofa", "ofa_e15"]
def train_facts(recipe: Path) -> dict[str, Any]:
    """The optimiser settings a recipe trains with (for the table's caption)."""
    t = load_recipe(recipe)[1].train
    return {"optimizer": t.optimizer, "lr": t.lr, "weight_decay": t.weight_decay, "schedule": t.schedule,
            "batch_size": t.batch_size}


def write_table(args: argparse.Namespace, results: dict[str, Any]) -> Path:
    rows = results["runs"]
    summaries = {s.arm: s for s in summarise(rows, "accuracy", baseline="scratch", order=ORDER)}
    kd_diffs = {s.arm: s for s in summarise(rows, "accuracy", baseline="kd", order=ORDER)}
    a = results["args"]
    margin = a.get("margin", 0.5)
    t = a.get("train", {})
    lines = [
        f"ResNet-56 (CNN, fine-tuned on the JPEGs, shipped) -> {a['student']} (from scratch) on JPEG CIFAR-10: "
        f"{a['per_class'] * 10} training images (class-balanced, subset seed 0), {a['epochs']} epochs of "
        f"{t.get('optimizer', '?')} (lr {t.get('lr', '?')}, weight decay {t.get('weight_decay', '?')}, "
        f"{t.get('schedule', '?')}), batch {t.get('batch_size', '?')}, crop + flip, the same steps in every arm; "
        f"top-1 on the 10,000 JPEG test images. Recipes: {a.get('configs', 'configs/cifar10_vit')}/.",
        "",
        "| arm | test accuracy (%), mean ± sd | vs scratch, paired (95% CI) | vs kd, paired (95% CI) | per seed "
        "| s / epoch |",
        "|---|---|---|---|---|---|",
    ]
    for arm, s in summaries.items():
        times = [r["epoch_time_s"] for r in rows if r["arm"] == arm and r.get("epoch_time_s")]
        ep = f"{sum(times) / len(times):.0f}" if times else "-"
        lines.append(f"| {arm} | {format_mean(s)} | {format_diff(s)} | {format_diff(kd_diffs[arm])} | "
                     f"{', '.join(f'{v:.2f}' for v in s.values.values())} | {ep} |")
    lines += ["", f"Spec: OFA >= KD {margin:+} on this pair. " + verdict_text(vit_ofa_verdicts(results)) + "."]
    lines += still_to_run(rows, a["arms"], a["seeds"])
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = arm_parser(__doc__, "vit_ofa", ORDER)
    p.add_argument("--only", nargs="+", default=None, help="train only these of --arms")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--student", default="vit_micro", help="a registered ViT (vit_micro: 96 x 4, vit_tiny: 128 x 8)")
    p.add_argument("--configs", type=Path, default=CONFIGS, help="the recipe folder (default configs/cifar10_vit)")
    p.add_argument("--margin", type=float, default=0.5,
                   help="the spec's bar for OFA - KD (0.5 on the CNN -> ViT pair, -0.3 on the homogeneous pair)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    files = discover_arms(args.configs, ORDER)
    for arm in [*args.arms, *(args.only or [])]:
        if arm not in files:
            print(f"--arms {arm}: no recipe {args.configs}/{arm}.yaml; recipes: {', '.join(files)}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / f"{args.name}.json"
    data = args.shared / "data" / "cifar10-jpeg.tar.gz"
    results: dict[str, Any] = {"runs": [], "args": {"student": args.student, "epochs": args.epochs,
                                                    "per_class": args.per_class, "arms": args.arms,
                                                    "seeds": args.seeds, "margin": args.margin,
                                                    "configs": str(args.configs.resolve().relative_to(REPO)),
                                                    "train": {}}}
    if args.report_only:
        if not results_path.exists():
            print(f"--report-only: {results_path} does not exist", file=sys.stderr)
            return 2
        results = json.loads(results_path.read_text())
        results["args"].setdefault("train", train_facts(files[args.arms[0]]))
        print(write_table(args, results).read_text())
        return 0
    if not data.exists():
        print(f"data not found: {data} (pass --shared)", file=sys.stderr)
        return 2
    results["args"]["train"] = train_facts(files[args.arms[0]])
    results["runs"] = previous_runs(results_path, results, ("student", "epochs", "per_class"))

    def overrides(arm: str, seed: int) -> list[str]:
        run_dir = args.work / "runs" / f"{args.student}-e{args.epochs}-n{args.per_class}-{arm}-seed{seed}"
        out = [f"seed={seed}", f"output_dir={json.dumps(str(run_dir))}",
               f"data.cache_dir={json.dumps(str(args.work / 'cache'))}", f"data.train={json.dumps(str(data))}",
               f"data.eval={json.dumps(str(data))}", f"student.arch={args.student}",
               f"data.train_per_class={args.per_class}"]
        if args.epochs != 15:
            out += [f"train.epochs={args.epochs}", f"train.eval_every={max(1, args.epochs // 3)}"]
        return out

    load_recipe(files[args.arms[0]], overrides(args.arms[0], args.seeds[0]))  # a bad override fails here, early
    sweep = Sweep({a: files[a] for a in args.arms}, args.seeds, results_path, overrides=overrides,
                  match_args=("student", "epochs", "per_class"), repo=REPO)
    sweep.run(results, only=args.only)
    print(write_table(args, results).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
