"""Demonstration of CNN-ViT collaborative learning (../shared/methods/dense.md, row 38) as the spec states it:
semantic segmentation of TexMosaic, a ResNet-20 trunk + 1x1 head (``seg_resnet20``, the run's student) and a ViT
96 x 4 on 4-px patches with a linear head per token (``seg_vit_micro``, the method's peer), both from scratch.

    nohup env OMP_NUM_THREADS=1 python benchmarks/cnn_vit_coop_seg.py > coopseg.log 2>&1 &   # 3 arms x seeds 0 1 2
    python benchmarks/cnn_vit_coop_seg.py --report-only                  # rewrite the table from the JSON
    python benchmarks/cnn_vit_coop_seg.py --seeds 0 --out /tmp/coopseg_smoke --work /tmp/coopseg_smoke \\
        --set train.epochs=1 data.texmosaic.train_size=64 data.texmosaic.eval_size=32     # smoke run

Arms (``configs/segmentation_coop/``): ``independent`` (each student its own per-pixel CE), ``dml`` (+ per-pixel KL
both ways on every labelled pixel), ``coop`` (+ HFD, region-wise BSD with R = 4 on the 16 x 16 maps and pixel-wise
BSD, lambda = 1 each); two ablations of coop for the diagnosis, ``pbsd`` (pixel-wise BSD alone: against dml, the
selection) and ``bsd`` (both BSD terms, no HFD: against coop, HFD). The same 1,000 training mosaics, 4 epochs of 32
steps (batch 32) and schedule in every arm (the TexMosaic students' of ``configs/segmentation/_base.yaml``). The
CNN's mIoU is the run's on the 500 test mosaics; the ViT's is the method's ``peer_miou``, measured on the same
mosaics after the last epoch. Recorded per run too: the mean fraction of labelled pixels where the CNN teaches the
ViT (``selected_cv``) and the reverse (``selected_vc``) in pixel-wise BSD (the reliable selection arms). Each
finished run is appended to ``<out>/<name>.json`` at once (rerunning skips finished runs; results made with other
settings are refused). Verdict (the spec's "works if", judged by ``verdicts_families.cnn_vit_coop_seg_verdicts``,
paired over the seeds): both students reach independent + 1 mIoU (the interval above zero) and coop >= dml on both
students (paired mean); pbsd and bsd are ablations, not judged.
"""

from __future__ import annotations

import json
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
    results_for,
    still_to_run,
    summarise,
)
from verdicts_families import cnn_vit_coop_seg_verdicts, verdict_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "segmentation_coop"
ORDER = ["independent", "dml", "coop", "pbsd", "bsd", "coop_hfd01"]


def write_table(out: Path, name: str, results: dict[str, Any]) -> Path:
    rows = results["runs"]
    s = results["settings"]
    sets = f"; overrides {' '.join(s['set'])}" if s.get("set") else ""
    lines = [f"TexMosaic (brick / grass / gravel, 64 px, {s['train_size']} train / {s['eval_size']} test mosaics), "
             f"mIoU (%) on the test mosaics. ResNet-20 trunk + 1x1 head (CNN, the run's student) and ViT 96 x 4 on "
             f"4-px patches with a per-token head (the method's peer) trained together from scratch, no teacher: "
             f"{s['epochs']} epochs ({s['steps']} steps) of batch {s['batch_size']}, AdamW cosine (CNN lr 2e-3, ViT "
             f"lr 1e-3 wd 0.01), the same mosaics and steps in every arm; recipes configs/segmentation_coop/{sets}. "
             "Reconstructed method (no official code).", ""]
    lines += ["| student | arm | mIoU (%), mean ± sd | vs independent, paired (95% CI) | vs dml, paired (95% CI) | "
              "per seed |", "|---|---|---|---|---|---|"]
    for metric, label in (("miou", "CNN (ResNet-20 trunk)"), ("peer_miou", "ViT (96 x 4)")):
        have = [r for r in rows if r.get(metric) is not None and r[metric] >= 0]  # -1: the peer never scored
        summ = {x.arm: x for x in summarise(have, metric, baseline="independent", order=ORDER)} if have else {}
        vs_dml = {x.arm: x for x in summarise(have, metric, baseline="dml", order=ORDER)} if have else {}
        for arm, x in summ.items():
            lines.append(f"| {label} | {arm} | {format_mean(x)} | {format_diff(x)} | {format_diff(vs_dml[arm])} | "
                         f"{', '.join(f'{v:.2f}' for v in x.values.values())} |")
    lines.append("")
    for arm in ("coop", "pbsd", "bsd"):
        sel = [r for r in rows if r["arm"] == arm and r.get("selected_cv") is not None]
        if sel:
            cv = [100 * r["selected_cv"] for r in sel]
            vc = [100 * r["selected_vc"] for r in sel]
            lines += [f"Pixel-wise BSD in {arm} (mean over training steps and {len(sel)} runs): the CNN teaches the "
                      f"ViT on {sum(cv) / len(cv):.1f}% of the labelled pixels, the ViT teaches the CNN on "
                      f"{sum(vc) / len(vc):.1f}%.", ""]
    lines.append("Spec: both students >= independent + 1 mIoU and HFD+BSD >= DML. "
                 + verdict_text(cnn_vit_coop_seg_verdicts(results)) + ".")
    plan = results.get("plan", {"arms": ORDER, "seeds": [0, 1, 2]})
    lines += still_to_run(rows, plan["arms"], plan["seeds"])
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = arm_parser(__doc__, "cnn_vit_coop_seg", ORDER)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every arm (smoke run: train.epochs=1 data.texmosaic.train_size=64 "
                        "data.texmosaic.eval_size=32)")
    start = arm_start(p, CONFIGS, ORDER, write_table)
    if start is None:
        return 0
    args, files, results_path = start
    unknown = [a for a in args.arms if a not in files]
    if unknown:
        p.error(f"--arms: {unknown[0]} is not an arm of {CONFIGS.relative_to(REPO)} ({', '.join(files)})")
    work = args.work.resolve()
    _, cfg = load_recipe(files[args.arms[0]], args.set)
    steps = cfg.train.epochs * -(-cfg.data.texmosaic.train_size // cfg.train.batch_size)
    settings = {"epochs": cfg.train.epochs, "steps": steps, "batch_size": cfg.train.batch_size,
                "train_size": cfg.data.texmosaic.train_size, "eval_size": cfg.data.texmosaic.eval_size,
                "set": list(args.set)}
    results = results_for(results_path, settings, {"runs": []})
    results["plan"] = {"arms": args.arms, "seeds": args.seeds}  # what still_to_run lists (not a setting)

    def overrides(arm: str, seed: int) -> list[str]:
        return [f"seed={seed}", f"output_dir={json.dumps(str(work / 'runs' / f'coopseg-{arm}-seed{seed}'))}",
                *args.set]

    def peer(arm: str, exp: Any) -> dict[str, Any]:
        summary = json.loads((Path(exp.trainer.run_dir) / "summary.json").read_text())
        method = exp.methods.methods["cnn_vit_coop"]
        out = {"accuracy": summary["final"].get("accuracy"), "peer_miou": float(method.peer_miou)}
        cv, vc, n = method.selected
        if n:  # pixel-wise BSD ran (dml: every labelled pixel both ways; coop: the reliable ones)
            out.update(selected_cv=cv / n, selected_vc=vc / n)
        return out

    sweep = Sweep({a: files[a] for a in args.arms}, args.seeds, results_path, overrides=overrides, metric="miou",
                  match_args=(), repo=REPO, after_fit=peer)
    sweep.run(results)
    print(write_table(args.out, args.name, results).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
