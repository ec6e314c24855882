"""ProC-KD (text-graph.md row 21) on the spec's analogue: a frozen CIFAR-10 ResNet-56 teacher, a ResNet-8 student
on scikit-learn digits (another label space), 20 labelled images per class, every other image (1,597) the test set.

Arms (the same recipe, configs/continual/proc_kd_digits.yaml, the same data, epochs, batches and optimiser):
  scratch        CE only (``mode: scratch``);
  fitnet         CE + a FitNet hint on the teacher's layer3 (``mode: fitnet``);
  proc_kd        ProC-KD, accuracy from the augmented head on the student's own tokens (``inference.py``);
  proc_kd_zs     the same trained ProC-KD model read from its plain head z_S (no extra training).
Seeds: the run seed and the labelled subset (``stream.data_seed = seed``), paired across arms.
Works if (spec): ProC-KD beats scratch by more than 2 std (the larger of the two arms' seed sd) and is at least as
good as FitNet (paired mean >= 0).

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/proc_kd_digits.py [--seeds 0 1 2]
    python benchmarks/proc_kd_digits.py --report     # the table from the finished seeds

A resumable queue: each (arm, seed) run resumes from its checkpoints under benchmarks/work/proc_kd_digits/ and its
result is kept there; benchmarks/results/proc_kd_digits.{json,md} are rebuilt after every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from portable import write_json  # noqa: E402
from sweep import paired_difference  # noqa: E402

from distill.config import read_yaml  # noqa: E402
from distill.streams.runner import build_runner  # noqa: E402
from distill.streams.section import parse_stream_config  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "proc_kd_digits"
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "configs" / "continual" / "proc_kd_digits.yaml"
TRAINED = {"scratch": {"mode": "scratch"}, "fitnet": {"mode": "fitnet"}, "proc_kd": {"mode": "proc_kd"}}
ARMS = ("scratch", "fitnet", "proc_kd", "proc_kd_zs")


def run_one(arm: str, seed: int) -> dict[str, float]:
    raw = read_yaml(RECIPE)
    raw["learner"]["options"] = {**raw["learner"].get("options", {}), **TRAINED[arm]}
    raw["seed"] = seed
    raw["stream"]["data_seed"] = seed
    raw["output_dir"] = str(WORK / arm / f"seed{seed}")
    runner = build_runner(parse_stream_config(raw))
    out = runner.run(resume=True)
    res = {arm: out["tasks"][-1]["seen_accuracy"]}
    if arm == "proc_kd":
        runner.learner.predict_from = "student"
        res["proc_kd_zs"] = runner.evaluate(runner.learner, 0, [])["seen_accuracy"]
    return res


def result_file(arm: str, seed: int) -> Path:
    return WORK / "results" / f"{arm}-seed{seed}.json"


def report() -> dict[str, Any]:
    acc: dict[str, dict[int, float]] = {a: {} for a in ARMS}
    for arm in TRAINED:
        for f in sorted((WORK / "results").glob(f"{arm}-seed*.json")):
            r = json.loads(f.read_text())
            for k, v in r["accuracy"].items():
                acc[k][int(r["seed"])] = 100 * v
    rows = []
    for arm in ARMS:
        xs = list(acc[arm].values())
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        row: dict[str, Any] = {"arm": arm, "seeds": len(xs), "mean": statistics.mean(xs) if xs else None, "sd": sd,
                               "per_seed": acc[arm]}
        for base in ("scratch", "fitnet"):
            if arm != base:
                m, ci, n = paired_difference(acc[arm], acc[base])
                row[f"vs_{base}"] = {"mean": m, "ci95": ci, "seeds": n}
        rows.append(row)
    by = {r["arm"]: r for r in rows}
    verdict = "pending: fewer than 3 seeds of proc_kd, scratch or fitnet"
    if min(by[a]["seeds"] for a in ("scratch", "fitnet", "proc_kd")) >= 3:
        spread = max(by["scratch"]["sd"], by["proc_kd"]["sd"])
        gain, vs_fit = by["proc_kd"]["vs_scratch"]["mean"], by["proc_kd"]["vs_fitnet"]["mean"]
        ok = gain > 2 * spread and vs_fit >= 0
        verdict = (f"{'works' if ok else 'missed'}: ProC-KD - scratch = {gain:+.2f} points (2 sd = {2 * spread:.2f}), "
                   f"ProC-KD - FitNet = {vs_fit:+.2f} points")
    out = {"benchmark": "proc_kd_digits", "recipe": "configs/continual/proc_kd_digits.yaml", "metric":
           "test accuracy (%) on the 1,597 digits outside the 200 labelled ones", "rows": rows, "verdict": verdict}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "proc_kd_digits.json", out)
    lines = ["# ProC-KD: CIFAR-10 ResNet-56 teacher -> ResNet-8 student on digits (another label space)", "",
             "Command: `nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/proc_kd_digits.py`; recipe "
             "`configs/continual/proc_kd_digits.yaml` (20 labels per class, 60 epochs, batch 32, Adam 2e-3).", "",
             "| arm | seeds | accuracy (mean +- sd) | paired vs scratch | paired vs FitNet |", "|---|---|---|---|---|"]

    def fmt(d: dict[str, Any] | None) -> str:
        if not d or d["mean"] is None:
            return "-"
        ci = f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d["ci95"] else ""
        return f"{d['mean']:+.2f}{ci}"

    for r in rows:
        m = "-" if r["mean"] is None else f"{r['mean']:.2f} +- {r['sd']:.2f}"
        m = f"{r['mean']:.2f} (1 seed)" if r["seeds"] == 1 else m
        lines.append(f"| {r['arm']} | {r['seeds']} | {m} | {fmt(r.get('vs_scratch'))} | {fmt(r.get('vs_fitnet'))} |")
    lines += ["", f"Verdict (spec: beats scratch by > 2 std and >= FitNet): **{verdict}**", "",
              "Notes: the recipe has no learning-rate decay and reports the last epoch; with 200 training images the "
              "last epoch can land badly (per-seed values in the JSON: scratch on seed 2 and the augmented head "
              "on seed 2 end far below their other seeds), and that spread decides the 2-sd test. proc_kd_zs is "
              "the same ProC-KD model read from its plain head z_S (no teacher, no prototypes at inference).", ""]
    (RESULTS / "proc_kd_digits.md").write_text("\n".join(lines))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if not args.report:
        for seed in args.seeds:
            for arm in TRAINED:
                f = result_file(arm, seed)
                if f.exists():
                    continue
                res = run_one(arm, seed)
                f.parent.mkdir(parents=True, exist_ok=True)
                write_json(f, {"arm": arm, "seed": seed, "accuracy": res})
                print(arm, seed, res, flush=True)
                report()
    print(json.dumps(report()["verdict"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
