"""Demonstration of ACAM-KD (../shared/methods/dense.md, row 5, part (i)): ResNet-56 -> ResNet-20 on JPEG CIFAR-10,
stage-3 features (64 x 8 x 8), against CE, KD (T = 4) and FitNet-style MSE on the same features.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/acam_kd.py       # 4 arms x 3 seeds -> results/acam_kd.*
    python benchmarks/acam_kd.py --report-only                           # rewrite the table from the JSON

Arms are the recipes of ``configs/acam_kd/`` (a CPU-sized budget: 1,000 training images, 2,000 test images,
8 epochs; the same data, steps, schedule and teacher in every arm). Each finished run is appended to the JSON at
once, so an interrupted benchmark resumes where it stopped. Verdict (the spec's "works if"): acam - fitnet >= 0.5
points (mean paired difference over the seeds) and the masks of 64 fixed test images change during training (mean
Dice between the masks after the first and after the last epoch < 0.9; the method's ``mask_dice_first`` buffer).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (  # noqa: E402
    Sweep,
    arm_parser,
    arm_start,
    format_diff,
    format_mean,
    load_recipe,
    paired_difference,
    previous_runs,
    still_to_run,
    summarise,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "acam_kd"
ORDER = ["scratch", "kd", "fitnet", "acam"]


def mask_diagnostics(arm: str, exp: Any) -> dict[str, Any]:
    """The ACAM run's mask Dice (first vs last epoch) and mask entropy, read from the method's buffers."""
    found: dict[str, Any] = {}
    for name, buf in exp.trainer.module.named_buffers():
        if name.endswith("mask_dice_first"):
            found["mask_dice_first_last"] = float(buf)
        elif name.endswith("mask_entropy"):
            found["mask_entropy"] = float(buf)
    return found


def verdict(summaries: dict[str, Any], rows: list[dict[str, Any]], margin: float) -> str:
    if "acam" not in summaries or "fitnet" not in summaries:
        return "pending"
    diff, _, n = paired_difference(summaries["acam"].values, summaries["fitnet"].values)
    dice = [r["mask_dice_first_last"] for r in rows if r["arm"] == "acam" and "mask_dice_first_last" in r]
    if diff is None or n < 2:
        return "pending (fewer than 2 common seeds with fitnet)"
    mean_dice = statistics.mean(dice) if dice else float("nan")
    ok = diff >= margin and mean_dice < 0.9
    return (f"{'works' if ok else 'missed'}: acam - fitnet = {diff:+.2f} over {n} seeds (needs >= {margin:+}); "
            f"mask Dice first vs last epoch {mean_dice:.3f} (needs < 0.9)")


def write_table(out: Path, name: str, results: dict[str, Any]) -> Path:
    rows = results["runs"]
    a = results["args"]
    summaries = {s.arm: s for s in summarise(rows, "accuracy", baseline="scratch", order=ORDER)}
    vs_fit = {s.arm: s for s in summarise(rows, "accuracy", baseline="fitnet", order=ORDER)}
    lines = [
        f"ResNet-56 (fine-tuned on the JPEGs, shipped) -> ResNet-20 on JPEG CIFAR-10, stage-3 features: "
        f"{a['per_class'] * 10} training images, {a['eval_per_class'] * 10} test images (class-balanced), "
        f"{a['epochs']} epochs, the same steps in every arm; recipes configs/acam_kd/. Top-1 (%).",
        "",
        "| arm | top-1 (%), mean ± sd | vs scratch, paired (95% CI) | vs fitnet, paired (95% CI) | per seed "
        "| mask Dice first/last epoch |",
        "|---|---|---|---|---|---|",
    ]
    for arm, s in summaries.items():
        dice = [r["mask_dice_first_last"] for r in rows if r["arm"] == arm and "mask_dice_first_last" in r]
        d = ", ".join(f"{x:.3f}" for x in dice) if dice else "-"
        lines.append(f"| {arm} | {format_mean(s)} | {format_diff(s)} | {format_diff(vs_fit[arm])} | "
                     f"{', '.join(f'{v:.2f}' for v in s.values.values())} | {d} |")
    lines += ["", f"Verdict (spec: ACAM >= FitNet-MSE + 0.5 and masks change, Dice < 0.9): "
                  f"{verdict(summaries, rows, a.get('margin', 0.5))}."]
    lines += still_to_run(rows, a["arms"], a["seeds"])
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = arm_parser(__doc__, "acam_kd", ORDER)
    p.add_argument("--margin", type=float, default=0.5)
    start = arm_start(p, CONFIGS, ORDER, write_table)
    if start is None:
        return 0
    args, files, results_path = start
    data = args.shared / "data" / "cifar10-jpeg.tar.gz"
    if not data.exists():
        print(f"data not found: {data} (pass --shared)", file=sys.stderr)
        return 2
    _, cfg = load_recipe(files[args.arms[0]])
    results: dict[str, Any] = {"runs": [], "args": {
        "epochs": cfg.train.epochs, "per_class": cfg.data.train_per_class, "eval_per_class": cfg.data.eval_per_class,
        "arms": args.arms, "seeds": args.seeds, "margin": args.margin}}
    results["runs"] = previous_runs(results_path, results, ("epochs", "per_class", "eval_per_class"))

    def overrides(arm: str, seed: int) -> list[str]:
        run_dir = args.work / "runs" / f"acam_kd-{arm}-seed{seed}"
        return [f"seed={seed}", f"output_dir={json.dumps(str(run_dir))}",
                f"data.cache_dir={json.dumps(str(args.work / 'cache'))}", f"data.train={json.dumps(str(data))}",
                f"data.eval={json.dumps(str(data))}"]

    sweep = Sweep({a: files[a] for a in args.arms}, args.seeds, results_path, overrides=overrides,
                  match_args=("epochs", "per_class", "eval_per_class"), repo=REPO, after_fit=mask_diagnostics)
    sweep.run(results)
    print(write_table(args.out, args.name, results).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
