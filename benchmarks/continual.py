"""Continual / novel-class demonstrations on CIFAR-10 JPEG (the specs' scaled runs, ``--dataset cifar10``) or on
scikit-learn digits (the fast stand-in, ``--dataset digits``, the default):

* ``ci``  (OnPro, pipelines.md row 14): class-incremental 5 x 2 classes; ER vs OCM-lite vs OnPro; final accuracy on
  all seen classes and average forgetting. Works if OnPro > OCM-lite by >= 2 points and >> ER, with lower forgetting.
* ``ykd`` (Dynamic Y-KD, row 25): class-incremental 6-4; fine-tuning, LwF, Y-KD, Dynamic Y-KD (trunk frozen /
  trainable); old / new / all accuracy, and the checkpoint-averaging sweep w in {0.25, 0.5, 0.75, 1}. Works if
  Dynamic Y-KD beats LwF on old classes with <= 2 points loss on new, and w traces a monotone old/new trade-off.
* ``ncd`` (Cr-KD, row 27): 0-4 known, 5-9 novel; UNO vs Cr-KD vs Cr-KD with w = 1; Hungarian clustering accuracy on
  the novel test images. Works if Cr-KD >= UNO + 1 point and the learned weighting >= the constant one.

Every arm of a suite has the same data, steps and model; 3 seeds (the run seed: initialisation and batch order; the
train/test split is fixed). A resumable queue: each (suite, arm, seed) run resumes from its checkpoints and its
result is kept in benchmarks/work/continual_<dataset>/; the tables (benchmarks/results/continual_<dataset>.{json,md})
are rebuilt from whatever has finished, with the verdicts of ``benchmarks/verdicts_families.py``. The recipes are
configs/continual/<method>_<dataset>.yaml.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/continual.py [--dataset cifar10] [--suites ci]
    python benchmarks/continual.py --dataset cifar10 --suites ykd --arms LwF DynYKD   # the verdict pair first
    python benchmarks/continual.py --report [--dataset cifar10]     # tables only
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
from verdicts_families import continual_verdicts  # noqa: E402

from distill.config import read_yaml  # noqa: E402
from distill.streams.runner import build_runner  # noqa: E402
from distill.streams.section import parse_stream_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SEEDS = (0, 1, 2)
DATASETS = {"digits": "scikit-learn digits", "cifar10": "CIFAR-10 JPEG"}
DATASET = "digits"  # set by --dataset
RECIPES = {"ci": "onpro", "ykd": "dynamic_ykd", "ncd": "crkd", "ncd_unfrozen": "crkd"}


def work() -> Path:
    return ROOT / "benchmarks" / "work" / f"continual_{DATASET}"


def recipe(suite: str) -> dict[str, Any]:
    return read_yaml(ROOT / "configs" / "continual" / f"{RECIPES[suite]}_{DATASET}.yaml")
#: options every arm of a suite shares on top of its recipe (``ncd_unfrozen``: an extra ablation, not the spec's
#: CPU adaptation: the trunk keeps training during discovery, so there is more for the distillation to hold)
SUITE_OPTIONS: dict[str, dict[str, Any]] = {"ncd_unfrozen": {"freeze_trunk": False}}
ARMS: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {"ER": {"use_instance": False, "use_ope": False, "use_apf": False},
           "OCM-lite": {"use_instance": True, "use_ope": False, "use_apf": False},
           "OnPro": {}},
    "ykd": {"fine-tuning": {"distill_weight": 0.0, "grow_branches": False},
            "LwF": {"shared_trunk": False, "grow_branches": False},
            "Y-KD": {"grow_branches": False},
            "DynYKD-frozen": {"trunk_trainable": False},
            "DynYKD": {}},
    "ncd": {"UNO": {"alpha": 0.0}, "Cr-KD": {}, "Cr-KD w=1": {"weighting": "constant"}},
}
ARMS["ncd_unfrozen"] = ARMS["ncd"]
BASELINE = {"ci": "OCM-lite", "ykd": "LwF", "ncd": "UNO", "ncd_unfrozen": "UNO"}
#: the spec's sweep (0.25 ... 1) and its lower end (0: the old head on the old rows, 0.1)
AVERAGING = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def run_one(suite: str, arm: str, seed: int) -> dict[str, Any]:
    raw = recipe(suite)
    raw["learner"]["options"] = {**raw["learner"].get("options", {}), **SUITE_OPTIONS.get(suite, {}),
                                 **ARMS[suite][arm]}
    raw["seed"] = seed
    raw["output_dir"] = str(work() / suite / arm.replace(" ", "_").replace("=", "") / f"seed{seed}")
    runner = build_runner(parse_stream_config(raw))
    out = runner.run(resume=True)
    last = out["tasks"][-1]
    res: dict[str, Any] = {"suite": suite, "arm": arm, "seed": seed, "tasks": out["tasks"]}
    if suite == "ci":
        res.update(final_accuracy=last["seen_accuracy"], forgetting=last["forgetting"])
    elif suite == "ykd":
        res.update(old=last["accuracy"]["task0"], new=last["accuracy"]["task1"], all=last["seen_accuracy"],
                   averaging=averaging_sweep(runner, out["tasks"]))
    else:
        res.update(novel=last["novel_clustering_accuracy"], known=last["known_accuracy"])
    return res


def averaging_sweep(runner: Any, tasks: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Old / new / all accuracy of the trained learner with its head averaged at each w of :data:`AVERAGING`."""
    learner = runner.learner
    sweep = {}
    for w in AVERAGING:
        learner.average_weight = w
        ev = runner.evaluate(learner, 1, tasks[:1])
        sweep[str(w)] = {"old": ev["accuracy"]["task0"], "new": ev["accuracy"]["task1"], "all": ev["seen_accuracy"]}
    return sweep


def resweep() -> None:
    """Recompute the averaging sweep of every finished ``ykd`` run from its final checkpoint (no training)."""
    for arm in ARMS["ykd"]:
        for seed in SEEDS:
            f = result_file("ykd", arm, seed)
            if not f.exists():
                continue
            res = json.loads(f.read_text())
            raw = recipe("ykd")
            raw["learner"]["options"] = {**raw["learner"].get("options", {}), **ARMS["ykd"][arm]}
            raw["seed"] = seed
            raw["output_dir"] = str(work() / "ykd" / arm.replace(" ", "_").replace("=", "") / f"seed{seed}")
            runner = build_runner(parse_stream_config(raw))
            out = runner.run(resume=True)  # the final checkpoint: nothing left to train
            assert out["tasks"] == res["tasks"], f"{f}: the checkpoint does not reproduce the stored results"
            res["averaging"] = averaging_sweep(runner, out["tasks"])
            write_json(f, res)


def result_file(suite: str, arm: str, seed: int) -> Path:
    return work() / "results" / f"{suite}-{arm.replace(' ', '_').replace('=', '')}-seed{seed}.json"


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} +- {100 * sd:.1f}"


def report() -> dict[str, Any]:
    done: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for suite, arms in ARMS.items():
        for arm in arms:
            for seed in SEEDS:
                f = result_file(suite, arm, seed)
                if f.exists():
                    done.setdefault((suite, arm), {})[seed] = json.loads(f.read_text())
    metrics = {"ci": ["final_accuracy", "forgetting"], "ykd": ["old", "new", "all"], "ncd": ["novel", "known"],
               "ncd_unfrozen": ["novel", "known"]}
    table: dict[str, Any] = {}
    flag = "" if DATASET == "digits" else f" --dataset {DATASET}"
    lines = [f"# Continual demonstrations on {DATASETS[DATASET]}", "",
             f"Command: `nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/continual.py{flag}`; "
             f"recipes configs/continual/*_{DATASET}.yaml. Mean +- sd over the finished seeds (n), in %; paired "
             "difference vs the baseline over the seeds both finished.", ""]
    for suite, arms in ARMS.items():
        base = BASELINE[suite]
        key = metrics[suite][0]
        if not any(done.get((suite, arm)) for arm in arms):
            lines += [f"## {suite}: not run on this dataset (`--suites {suite}` runs it)", ""]
            continue
        lines += [f"## {suite} (baseline {base})", "",
                  "| arm | n | " + " | ".join(metrics[suite]) + f" | paired diff {key} vs {base} |",
                  "|---|---|" + "---|" * (len(metrics[suite]) + 1)]
        table[suite] = {}
        for arm in arms:
            runs = done.get((suite, arm), {})
            row = {m: [r[m] for r in runs.values()] for m in metrics[suite]}
            base_runs = done.get((suite, base), {})
            common = sorted(set(runs) & set(base_runs))
            diff = [runs[s][key] - base_runs[s][key] for s in common]
            table[suite][arm] = {"n": len(runs), "seeds": sorted(runs), **{m: row[m] for m in metrics[suite]},
                                 "paired_diff": diff}
            if suite == "ykd" and runs:
                table[suite][arm]["averaging"] = {
                    w: {p: [r["averaging"][w][p] for r in runs.values()] for p in ("old", "new", "all")}
                    for w in map(str, AVERAGING)}
            lines.append(f"| {arm} | {len(runs)} | " + " | ".join(ms(row[m]) for m in metrics[suite])
                         + f" | {ms(diff) if arm != base else '-'} |")
        lines.append("")
        if suite == "ykd":
            lines += ["Checkpoint averaging of the head (old / new accuracy, %):", "",
                      "| arm | " + " | ".join(f"w={w}" for w in AVERAGING) + " |",
                      "|---|" + "---|" * len(AVERAGING)]
            for arm in arms:
                av = table[suite][arm].get("averaging")
                if av:
                    lines.append(f"| {arm} | " + " | ".join(
                        f"{ms(av[str(w)]['old'])} / {ms(av[str(w)]['new'])}" for w in AVERAGING) + " |")
            lines.append("")
        if suite == "ci" and _mean(table[suite].get("OnPro", {}).get("forgetting", [])) < 0:
            lines += ["OnPro's forgetting is negative: after task 0 its CE sees the current classes only through the "
                      "reservoir (APF-mixed buffer batches), so a task's accuracy keeps rising after it ends.", ""]
        if suite == "ykd" and averaging_note(table[suite]):
            lines += [averaging_note(table[suite]), ""]
        lines += [f"@verdict {suite}", ""]
    data = {"dataset": DATASET, "seeds": list(SEEDS), "suites": table}
    verdicts = continual_verdicts(data)
    for suite in table:
        judged = [f"{row.split('/', 1)[1]}: **{v}**" for row, v in verdicts.items()
                  if row.startswith(suite + "/") and v.status != "role"]
        text = "Verdict (benchmarks/verdicts_families.py): " + "; ".join(judged) if judged else "no result yet"
        lines[lines.index(f"@verdict {suite}")] = text
    write_json(RESULTS / f"continual_{DATASET}.json", data)
    (RESULTS / f"continual_{DATASET}.md").write_text("\n".join(lines) + "\n")
    return table


def _mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def averaging_note(t: dict[str, Any]) -> str:
    """Dynamic Y-KD (trunk trainable / frozen) minus LwF at each averaging weight w, old / new points."""
    lwf_av = t.get("LwF", {}).get("averaging", {})
    text = []
    for arm in ("DynYKD", "DynYKD-frozen"):
        av = t.get(arm, {}).get("averaging", {})
        if not av or not lwf_av:
            continue
        parts = []
        for w in AVERAGING:
            do = _mean(av[str(w)]["old"]) - _mean(lwf_av[str(w)]["old"])
            dn = _mean(av[str(w)]["new"]) - _mean(lwf_av[str(w)]["new"])
            parts.append(f"w={w}: {100 * do:+.1f}/{100 * dn:+.1f}")
        text.append(f"{arm} - LwF at the same averaging weight (old/new points, means): " + ", ".join(parts) + ".")
    return " ".join(text)


def main() -> int:
    global DATASET
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    p.add_argument("--suites", nargs="*", default=["ykd", "ncd", "ci", "ncd_unfrozen"])
    p.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    p.add_argument("--arms", nargs="*", default=None,
                   help="run only these arms of the suites (the verdict's pair first, e.g. --arms LwF DynYKD)")
    p.add_argument("--report", action="store_true")
    p.add_argument("--resweep", action="store_true", help="recompute the ykd averaging sweep from the checkpoints")
    args = p.parse_args()
    DATASET = args.dataset
    known = {arm for suite in args.suites for arm in ARMS[suite]}
    unknown = sorted(set(args.arms or ()) - known)
    if unknown:
        p.error(f"--arms: {unknown[0]!r} is no arm of the suites {args.suites} (arms: {', '.join(sorted(known))})")
    if args.resweep:
        resweep()
    if not args.report and not args.resweep:
        for seed in args.seeds:
            for suite in args.suites:
                for arm in ARMS[suite]:
                    f = result_file(suite, arm, seed)
                    if f.exists() or (args.arms is not None and arm not in args.arms):
                        continue
                    res = run_one(suite, arm, seed)
                    f.parent.mkdir(parents=True, exist_ok=True)
                    write_json(f, res)
                    print(suite, arm, seed, {k: v for k, v in res.items() if k not in ("tasks", "averaging")},
                          flush=True)
                    try:
                        report()
                    except OSError as e:  # another queue process rewrote the tables at the same moment
                        print(f"tables not rewritten now ({e}); the next run or --report rebuilds them", flush=True)
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
