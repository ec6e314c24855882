"""Demonstration of exo -> ego paired-view distillation (../shared/methods/dense.md, row 7), the no-video analogue on
JPEG CIFAR-10: the student learns on unlabelled (ego, exo) pairs to reproduce the frozen exo teacher's stage maps.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/paired_views.py     # source-only once, 4 arms x 3 seeds
    python benchmarks/paired_views.py --report-only

Arms (``configs/paired_views/``, the same pair images, steps and schedule): ``paired_kd`` (sum of stage-1..3 MSEs,
no label, student initialised from the teacher), ``oracle`` (CE on the ego views of the same images, from the
teacher's weights), ``adapter`` (the paper's feature-level KD: the exo model frozen, a residual conv adapter after
its stage 2 trained with MSE(g(x_ego) + x_ego, x_exo), the frozen stage 3 + head on the adapted maps at test time)
and ``combined`` (that seed's trained adapter frozen inside a student trained as paired_kd; it runs after the
``adapter`` arm of its seed and reads its ``student.safetensors``). ``source_only`` is the teacher itself scored on
the ego test views (no training, one number). Metric: top-1 on the ego view of the test images. Verdict (the spec's
"works if", judged by ``verdicts_families.paired_views_verdicts``): paired_kd closes >= 50 % of the gap from
source-only to the oracle, (paired_kd - source) / (oracle - source) >= 0.5 on the seed means with the per-seed
shares' interval above zero; the same share is reported for the adapter and combined arms.
Each finished run is appended to the JSON at once; an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import (  # noqa: E402
    Sweep,
    arm_parser,
    arm_start,
    cifar_overrides,
    format_diff,
    format_mean,
    load_recipe,
    previous_runs,
    summarise,
)
from verdicts_families import paired_views_verdicts, verdict_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "paired_views"
ORDER = ["paired_kd", "oracle", "adapter", "combined"]
#: arms whose share of the source-only -> oracle gap the verdict line reports beside paired_kd's (their rows' text)
BASELINES = ("adapter", "combined")


def gap_closed(summaries: dict[str, Any], source: float | None, arm: str) -> float | None:
    """(arm - source) / (oracle - source) on the seed means; None when either is missing or the gap is not > 0."""
    if source is None or arm not in summaries or "oracle" not in summaries:
        return None
    gap = summaries["oracle"].mean - source
    return (summaries[arm].mean - source) / gap if gap > 0 else None


def write_table(out: Path, name: str, results: dict[str, Any]) -> Path:
    rows, a = results["runs"], results["args"]
    source = results.get("source_only")
    summaries = {s.arm: s for s in summarise(rows, "accuracy", baseline="oracle", order=ORDER)}
    lines = [
        f"Exo -> ego on JPEG CIFAR-10: {a['per_class'] * 10} pair images, {a['epochs']} epochs, the shipped ResNet-56 "
        "as the exo teacher and as every student's start (adapter: that model frozen, only the stage-2 adapter "
        f"trains); top-1 (%) on the ego view of {a['eval_per_class'] * 10} test images. Recipes "
        "configs/paired_views/.",
        "",
        "| arm | ego top-1 (%), mean ± sd | vs oracle, paired (95% CI) | gap closed (%) | per seed |",
        "|---|---|---|---|---|",
        f"| source_only (teacher on ego) | {100 * source:.2f} | | 0 | (no training) |" if source is not None else
        "| source_only | pending | | | |",
    ]
    src = None if source is None else 100 * source
    for arm, s in summaries.items():
        closed = gap_closed(summaries, src, arm)
        lines.append(f"| {arm} | {format_mean(s)} | {format_diff(s)} | "
                     f"{'' if closed is None else f'{100 * closed:.0f}'} | "
                     f"{', '.join(f'{v:.2f}' for v in s.values.values())} |")
    lines += ["", "Spec: the student closes >= 50 % of the gap from source-only to the oracle. "
              + verdict_text(paired_views_verdicts(results), also=BASELINES) + "."]
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = arm_parser(__doc__, "paired_views", ORDER)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every arm")
    start = arm_start(p, CONFIGS, ORDER, write_table)
    if start is None:
        return 0
    args, files, results_path = start
    # seed-major in ORDER: a seed's adapter run exists before its combined run reads it
    args.arms = sorted(args.arms, key=lambda a: ORDER.index(a) if a in ORDER else len(ORDER))
    common = cifar_overrides(args, args.set)
    if common is None:
        return 2
    _, cfg = load_recipe(files["paired_kd"], common)
    results: dict[str, Any] = {"runs": [], "args": {"epochs": cfg.train.epochs, "per_class": cfg.data.train_per_class,
                                                    "eval_per_class": cfg.data.eval_per_class, "arms": args.arms,
                                                    "seeds": args.seeds}}
    match = ("epochs", "per_class", "eval_per_class")
    results["runs"] = previous_runs(results_path, results, match)
    old = json.loads(results_path.read_text()) if results_path.exists() else {}
    if old.get("args", {}).get("eval_per_class") == cfg.data.eval_per_class and "source_only" in old:
        results["source_only"] = old["source_only"]
    else:  # the teacher on the ego test views: the student of the paired recipe before any step is the teacher
        from distill.experiment import build_experiment

        exp = build_experiment(load_recipe(files["paired_kd"], [
            *common, f"output_dir={json.dumps(str(args.work / 'runs' / 'paired_views-source'))}"])[1])
        results["source_only"] = exp.trainer.evaluate()["accuracy"]

    def run_dir(arm: str, seed: int) -> Path:
        return args.work / "runs" / f"paired_views-{arm}-seed{seed}"

    def overrides(arm: str, seed: int) -> list[str]:
        extra = ([f"student.adapter.weights={json.dumps(str(run_dir('adapter', seed) / 'student.safetensors'))}"]
                 if arm == "combined" else [])  # the adapter this seed's adapter arm trained
        return [f"seed={seed}", f"output_dir={json.dumps(str(run_dir(arm, seed)))}", *extra, *common]

    sweep = Sweep({a: files[a] for a in args.arms}, args.seeds, results_path, overrides=overrides, match_args=match,
                  repo=REPO)
    write_json(results_path, results)  # the source-only number, before any arm runs
    sweep.run(results)
    print(write_table(args.out, args.name, results).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
