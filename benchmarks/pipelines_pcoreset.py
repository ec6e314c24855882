"""PCoreSet vs random / entropy / feature-coreset selection in ActiveKD on JPEG CIFAR-10 (spec row 35, reduced).

One pipeline (``configs/pipelines/pcoreset_cifar10.yaml``'s teacher stage, then one ``pcoreset_select`` stage
per (seed, strategy)), so it is resumable: rerun the command and finished stages are reused, an interrupted one
resumes at its last round. Equal labelled budget, steps and data for every arm. Writes
benchmarks/results/pipelines_pcoreset.{json,md} after every stage.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/pipelines_pcoreset.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from portable import write_json  # noqa: E402
from stage_tables import msd  # noqa: E402
from verdicts_families import pcoreset_verdicts, verdict_text  # noqa: E402

from distill.config import read_yaml  # noqa: E402
from distill.pipelines.pipeline import parse_pipeline, run_pipeline  # noqa: E402

RECIPE = ROOT / "configs" / "pipelines" / "pcoreset_cifar10.yaml"
STRATEGIES = ["random", "entropy", "coreset", "pcoreset"]


def table(report: dict, seeds: list[int], args: argparse.Namespace) -> tuple[dict, str]:
    runs = {r["stage"]: r["meta"] for r in report["stages"] if r["kind"] == "pcoreset_select"}
    teacher = next(r["meta"] for r in report["stages"] if r["kind"] == "teacher_logits")
    out = {"teacher_test_accuracy": teacher["test_accuracy"], "runs": runs, "arms": {},
           "settings": {k: getattr(args, k) for k in ("pool_per_class", "test_per_class", "rounds", "steps")}}
    n_test, n_pool, last = 10 * args.test_per_class, 10 * args.pool_per_class, 10 + 10 * args.rounds
    for s in STRATEGIES:
        got = [runs[f"{s}_s{seed}"] for seed in seeds if f"{s}_s{seed}" in runs]
        out["arms"][s] = {"seeds": len(got), "mean_accuracy": [g["mean_accuracy"] for g in got],
                          "early": [sum(g["accuracy"][1:4]) / 3 for g in got],
                          "final": [g["accuracy"][-1] for g in got]}
    base = out["arms"]["random"]
    lines = ["# PCoreSet vs random / entropy / feature coreset (ActiveKD, JPEG CIFAR-10, reduced)", "",
             "Teacher: un-fine-tuned akamaster ResNet-56 standing in for a zero-shot VLM "
             f"(test accuracy {100 * teacher['test_accuracy']:.2f} % on the {n_test} test images). Pool {n_pool}, "
             f"test {n_test}, 1 label/class to start, {args.rounds} rounds x 10 labels, dual-head CNN 16-32-64 "
             f"re-initialised each round, {args.steps} steps of 32 labelled + 32 unlabelled per round (equal for "
             "every strategy). Accuracy of p (alpha 0.5, beta 1) in %, mean ± sd over seeds; 'early' = rounds 1-3; "
             "paired difference vs random.", "",
             f"| strategy | seeds | mean over rounds (AUC) | early rounds 1-3 | final ({last} labels) | AUC - random |",
             "|---|---|---|---|---|---|"]
    for s in STRATEGIES:
        a = out["arms"][s]
        n = min(len(a["mean_accuracy"]), len(base["mean_accuracy"]))
        diff = [x - y for x, y in zip(a["mean_accuracy"][:n], base["mean_accuracy"][:n])]
        a["auc_minus_random"] = diff
        lines.append(f"| {s} | {a['seeds']} | {msd(a['mean_accuracy'])} | {msd(a['early'])} | {msd(a['final'])} | "
                     f"{msd(diff) if s != 'random' else '-'} |")
    p, r, c = (out["arms"][k] for k in ("pcoreset", "random", "coreset"))
    if p["seeds"] and r["seeds"] and c["seeds"]:
        out["verdict"] = verdict_text(pcoreset_verdicts(out))
        n = min(p["seeds"], c["seeds"])
        vs_core = [x - y for x, y in zip(p["mean_accuracy"][:n], c["mean_accuracy"][:n])]
        out["pcoreset_minus_coreset"] = vs_core
        lines += ["", f"PCoreSet - feature coreset (AUC, paired): {msd(vs_core)} points.", "",
                  "Works if (spec): PCoreSet's mean accuracy across rounds >= random and >= feature coreset, with a "
                  f"strict gain in the early rounds. {out['verdict']}."]
    return out, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "work" / "pipelines_pcoreset"))
    # smaller than the recipe (pool 500/class, test 200/class, 8 rounds, 100 steps): what a shared 2-core machine
    # finishes; the table states the settings it ran with
    ap.add_argument("--pool-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--name", default="pipelines_pcoreset", help="results/<name>.{json,md}")
    args = ap.parse_args()
    results = ROOT / "benchmarks" / "results" / args.name
    torch.set_num_threads(1)
    raw = read_yaml(RECIPE)
    raw["output_dir"] = args.out
    raw["stages"][0]["options"]["data"].update(pool_per_class=args.pool_per_class, test_per_class=args.test_per_class)
    template = raw["stages"][1]
    template["options"].update(rounds=args.rounds, steps=args.steps)
    stages = [raw["stages"][0]]
    for seed in args.seeds:  # seed-major: a partial run still covers every strategy
        for s in STRATEGIES:
            st = copy.deepcopy(template)
            st["name"] = f"{s}_s{seed}"
            st["options"].update(strategy=s, seed=seed)
            stages.append(st)
    for n in range(2, len(stages) + 1):  # one more stage at a time, so the table is written as it goes
        raw["stages"] = stages[:n]
        report = run_pipeline(parse_pipeline(copy.deepcopy(raw), base_dir=RECIPE.parent))
        out, md = table(report, args.seeds, args)
        write_json(results.with_suffix(".json"), out)
        results.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
