"""Demonstration of ``task: semantic_segmentation`` on TexMosaic (methods/dense.md, group D conventions).

    python benchmarks/dense_seg.py                # background: nice -n 10; about 40 min on 2 shared CPU cores
    python benchmarks/dense_seg.py --table-only   # rebuild the table from benchmarks/results/dense_seg.json

TexMosaic: 64 x 64 mosaics of 2-4 Voronoi regions cut from scikit-image's brick, grass and gravel photographs
(train crops from rows 0-319, test crops from rows 320-511), 1,000 training mosaics, 500 fixed test mosaics, 3
classes, mIoU (configs/segmentation/_base.yaml). Every run is `distill train configs/segmentation/<recipe>.yaml`
in its own single-thread process; results are written as they finish (rerunning skips finished runs):

- stage ``teacher`` (seg_resnet_teacher, CE, 12 epochs = 3x the students' steps), once;
- arms at equal steps (4 epochs, 128 steps), seeds 0-2: ``ce`` (the student on the labels) and ``fitnet``
  (CE + FitNet hint on the stride-8 stage f3, teacher served from its cache).

TransKD (row 3), the method this data was chosen for, runs on the mini-MiT students in its own script,
``benchmarks/transkd_seg.py`` (its own CE and feature-MSE baselines); this table is the family's demonstration with
the ResNet pair.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_sr import train  # noqa: E402
from portable import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "segmentation"
ARMS = ["ce", "fitnet"]


def mean_sd(v: list[float]) -> str:
    return f"{100 * statistics.mean(v):.2f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0.0):.2f}"


def write_table(results: dict[str, Any], out: Path) -> str:
    by = {a: sorted((r for r in results["runs"] if r["arm"] == a), key=lambda r: r["seed"]) for a in ARMS}
    t = results.get("stages", {}).get("teacher", {})
    lines = [
        "TexMosaic (brick / grass / gravel, 64 px, 1,000 train / 500 test mosaics), mIoU (%) on the test mosaics. "
        f"Teacher seg_resnet_teacher (12 epochs): {100 * t.get('miou', float('nan')):.2f}. Students "
        "seg_resnet_student, 4 epochs (128 steps), AdamW lr 2e-3 cosine, batch 32.",
        "",
        "| arm | mIoU mean ± sd | pixel accuracy | vs ce, paired | per seed |",
        "|---|---|---|---|---|",
    ]
    ce = {r["seed"]: r["miou"] for r in by["ce"]}
    for arm, recs in by.items():
        if not recs:
            continue
        d = [r["miou"] - ce[r["seed"]] for r in recs if r["seed"] in ce]
        diff = f"{mean_sd(d)} (n={len(d)})" if arm != "ce" and d else ""
        per_seed = ", ".join(f"{100 * r['miou']:.2f}" for r in recs)
        lines.append(f"| {arm} | {mean_sd([r['miou'] for r in recs])} | {mean_sd([r['accuracy'] for r in recs])} "
                     f"| {diff} | {per_seed} |")
    text = "\n".join(lines) + "\n"
    (out / "dense_seg.md").write_text(text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "dense_seg")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("dense_seg.json" if not args.sets else "dense_seg_smoke.json")
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": [], "stages": {}}
    if args.table_only:
        print(write_table(results, args.out))
        return 0
    work = args.work.resolve()
    start = time.perf_counter()
    s = train(CONFIGS / "teacher.yaml", work / "teacher", args.sets)
    results["stages"]["teacher"] = {**s["final"], "steps": s["steps"], "wall_time_s": s["wall_time_s"]}
    write_json(path, results)
    teacher_w = work / "teacher" / "student.safetensors"
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    queue = [(a, sd) for sd in args.seeds for a in args.arms if (a, sd) not in done]

    def one(arm: str, seed: int) -> dict[str, Any]:
        sets = [f"seed={seed}"]
        if arm == "fitnet":
            sets += [f"teacher.weights={teacher_w}", f"teacher.cache.path={work / 'teacher_cache'}"]
        r = train(CONFIGS / f"{arm}.yaml", work / f"seed{seed}" / arm, sets + args.sets)
        return {"arm": arm, "seed": seed, **r["final"], "steps": r["steps"], "wall_time_s": r["wall_time_s"]}

    with ThreadPoolExecutor(args.jobs) as pool:
        for rec in pool.map(lambda t: one(*t), queue):
            results["runs"].append(rec)
            write_json(path, results)
            print(f"{rec['arm']} seed {rec['seed']}: mIoU {rec['miou']:.4f}", flush=True)
    results["wall_time_s"] = results.get("wall_time_s", 0.0) + time.perf_counter() - start
    write_json(path, results)
    print(write_table(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
