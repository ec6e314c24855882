"""Demonstration of TransKD (../shared/methods/dense.md, row 3): mini-MiT-B1 -> mini-MiT-B0 on TexMosaic, both from
scratch, against CE only and FitNet-style feature MSE, at equal steps and data.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/transkd_seg.py      # teacher once, then 5 arms x 3 seeds
    python benchmarks/transkd_seg.py --report-only                          # rewrite the table from the JSON
    python benchmarks/transkd_seg.py --seeds 0 --arms mit_ce transkd_base --out /tmp/transkd_smoke \\
        --work /tmp/transkd_smoke --set train.epochs=1 data.texmosaic.train_size=64 data.texmosaic.eval_size=32
                                                                            # smoke run (a few steps)

1. The mini-MiT-B1 teacher (``configs/segmentation/mit_teacher.yaml``: 3x the students' steps) is trained once and
   kept (``<work>/runs/transkd-mit_teacher``; a finished run is reused, an interrupted one resumes from its
   checkpoint). Its stage outputs s1-s4 and patch embeddings e1-e4 on the training mosaics are cached once
   (``<work>/transkd-mit_teacher_cache``) and served to every distilled arm.
2. Arms (``configs/segmentation/``), the mini-MiT-B0 student with the same mosaics, steps and schedule: ``mit_ce``
   (CE only), ``mit_fitnet`` (CE + feature MSE on stage 3 through a 1x1 regressor, the spec's baseline) and
   ``mit_fitnet_w01`` (the same at weight 0.1), ``transkd_base`` (CE + CSF/HCL + PEA), ``transkd_gl``
   (+ GL-Mixer) and ``transkd_ea`` (+ EA); seeds 0-2 (3 and 4 added: see benchmarks/README.md).

Each finished run is appended to ``<out>/<name>.json`` at once (rerunning skips finished runs); results made with
other settings are refused (give ``--out``). Verdict (the spec's "works if", judged by
``verdicts_families.transkd_verdicts``): transkd_base >= mit_ce + 2 mIoU (paired over the seeds, the interval above
zero) and transkd_base >= the better of mit_fitnet and mit_fitnet_w01 (paired mean).
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
    format_diff,
    format_mean,
    load_recipe,
    results_for,
    run_stage,
    still_to_run,
    summarise,
)
from verdicts_families import transkd_verdicts, verdict_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "segmentation"
ORDER = ["mit_ce", "mit_fitnet", "mit_fitnet_w01", "transkd_base", "transkd_gl", "transkd_ea"]
TEACHER = "mit_teacher"
NOT_ARMS = ["teacher", "ce", "fitnet", TEACHER]  # benchmarks/dense_seg.py's recipes and the teacher stage


def write_table(out: Path, name: str, results: dict[str, Any]) -> Path:
    rows = results["runs"]
    s = results["settings"]
    summaries = summarise(rows, "miou", baseline="mit_ce", order=ORDER)
    vs_fit = {x.arm: x for x in summarise(rows, "miou", baseline="mit_fitnet", order=ORDER)}
    acc = {x.arm: x for x in summarise(rows, "accuracy", order=ORDER)}
    t = results.get("teacher", {})
    sets = f"; overrides {' '.join(s['set'])}" if s.get("set") else ""
    lines = [
        f"TexMosaic (brick / grass / gravel, 64 px, {s['train_size']} train / {s['eval_size']} test mosaics), mIoU "
        f"(%) on the test mosaics. Teacher mini-MiT-B1 (widths 64/128/320/512), {s['teacher_epochs']} epochs from "
        f"scratch: {100 * (t.get('miou') if t.get('miou') is not None else float('nan')):.2f}. Students mini-MiT-B0 "
        f"(32/64/160/256), {s['epochs']} epochs ({s['steps']} steps) from scratch, AdamW lr 1e-3 cosine, batch "
        f"{s['batch_size']}, the same mosaics and steps in every arm; recipes configs/segmentation/{sets}.",
        "",
        "| arm | mIoU (%), mean ± sd | vs mit_ce, paired (95% CI) | vs mit_fitnet, paired (95% CI) | "
        "pixel accuracy (%) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for x in summaries:
        lines.append(f"| {x.arm} | {format_mean(x)} | {format_diff(x)} | {format_diff(vs_fit[x.arm])} | "
                     f"{format_mean(acc[x.arm])} | {', '.join(f'{v:.2f}' for v in x.values.values())} |")
    lines += ["", "Spec: Base >= CE + 2 mIoU and Base >= feature MSE. " + verdict_text(transkd_verdicts(results))
              + "."]
    plan = results.get("plan", {"arms": ORDER, "seeds": [0, 1, 2]})
    lines += still_to_run(rows, plan["arms"], plan["seeds"])
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = arm_parser(__doc__, "transkd_seg", ORDER)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for the teacher and every arm (smoke run: train.epochs=1 "
                        "data.texmosaic.train_size=64 data.texmosaic.eval_size=32)")
    start = arm_start(p, CONFIGS, ORDER, write_table, stages=NOT_ARMS)
    if start is None:
        return 0
    args, files, results_path = start
    unknown = [a for a in args.arms if a not in files]
    if unknown:
        p.error(f"--arms: {unknown[0]} is not an arm of {CONFIGS.relative_to(REPO)} ({', '.join(files)})")
    work = args.work.resolve()
    _, cfg = load_recipe(files[args.arms[0]], args.set)
    _, tcfg = load_recipe(CONFIGS / f"{TEACHER}.yaml", args.set)
    steps = cfg.train.epochs * -(-cfg.data.texmosaic.train_size // cfg.train.batch_size)
    settings = {"epochs": cfg.train.epochs, "steps": steps, "teacher_epochs": tcfg.train.epochs,
                "batch_size": cfg.train.batch_size, "train_size": cfg.data.texmosaic.train_size,
                "eval_size": cfg.data.texmosaic.eval_size, "set": list(args.set)}
    results = results_for(results_path, settings, {"runs": []})
    results["plan"] = {"arms": args.arms, "seeds": args.seeds}  # what still_to_run lists (not a setting)

    teacher_dir = work / "runs" / f"transkd-{TEACHER}"
    stage = run_stage(CONFIGS / f"{TEACHER}.yaml", [*args.set, f"output_dir={json.dumps(str(teacher_dir))}"])
    final = stage.summary.get("final", {})
    results["teacher"] = {"recipe": f"configs/segmentation/{TEACHER}.yaml", "miou": final.get("miou"),
                          "accuracy": final.get("accuracy")}
    write_json(results_path, results)
    cache = work / f"transkd-{TEACHER}_cache"

    def overrides(arm: str, seed: int) -> list[str]:
        out = [f"seed={seed}", f"output_dir={json.dumps(str(work / 'runs' / f'transkd-{arm}-seed{seed}'))}",
               *args.set]
        if arm != "mit_ce":
            out += [f"teacher.weights={json.dumps(str(stage.weights))}",
                    f"teacher.cache.path={json.dumps(str(cache))}"]
        return out

    def accuracy(arm: str, exp: Any) -> dict[str, Any]:
        summary = json.loads((Path(exp.trainer.run_dir) / "summary.json").read_text())
        return {"accuracy": summary["final"].get("accuracy")}

    sweep = Sweep({a: files[a] for a in args.arms}, args.seeds, results_path, overrides=overrides, metric="miou",
                  match_args=(), repo=REPO, after_fit=accuracy)
    sweep.run(results)
    print(write_table(args.out, args.name, results).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
