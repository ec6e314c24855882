"""Row 12 (dense.md): reverse distillation for texture anomaly detection, on real photographs with SYNTHETIC
defects (scikit-image's brick, grass and gravel; the defects are seeded transforms with exact masks, see
``distill.tasks.anomaly.data``).

Arms, per texture and seed, at equal steps and data:
* ``no_student``: the frozen ResNet-56's features, cosine distance to their training mean (the spec's baseline);
* ``rd4ad``: RD4AD-style student (levels f1-f3, OCBE, no skips, flattened-cosine loss; Adam lr 0.005 b1 0.5);
* ``dbfad``: DBFAD-style student (levels f0-f3, attention bottleneck, attention skips, per-pixel loss; Adam lr
  0.005 b1 0.9).
The teacher (the shipped ResNet-56 fine-tuned on JPEG CIFAR-10) runs once per texture: its features of the training
and evaluation crops are computed once and every arm and seed reads them (so training crops are not flipped here;
``distill train configs/anomaly/...`` flips them). Metrics: image and pixel AUROC (scikit-learn) and ms per crop
(encoder + decoder + map, batch 50, one thread; wall clock on a shared machine, indicative only).
Works if (spec): the RD model reaches image AUROC >= 0.90 on at least 2 of the 3 textures and beats the no-student
baseline.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/anomaly_rd.py            # resumable; then --table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

from distill.core.batch import Batch  # noqa: E402
from distill.methods.dense.reverse_distillation import anomaly_map, cosine_map_distance  # noqa: E402
from distill.models import MODELS  # noqa: E402
from distill.models.weights import load_weights_into  # noqa: E402
from distill.tasks.anomaly.data import eval_crops, train_crops  # noqa: E402
from distill.tasks.anomaly.models import FeatureMeanBaseline, dbfad_student, encoder_levels, rd4ad_student  # noqa: E402
from distill.tasks.anomaly.task import AnomalyDetection, AnomalyMetrics  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "anomaly_rd.json"
WORK = ROOT / "work"
TEACHER = ROOT.parent / "src" / "distill" / "assets" / "resnet56_cifar10_jpeg.safetensors"
ARMS = ("no_student", "rd4ad", "dbfad")
TEXTURES = ("brick", "grass", "gravel")


def normalise(images: torch.Tensor) -> torch.Tensor:
    task = AnomalyDetection(flip=False)
    return task.prepare(Batch(inputs=images, labels=None), train=False, generator=None).inputs


@torch.no_grad()
def features(encoder: torch.nn.Module, x: torch.Tensor, bs: int = 50) -> list[torch.Tensor]:
    parts = [encoder_levels(encoder, x[i:i + bs]) for i in range(0, len(x), bs)]
    return [torch.cat([p[k] for p in parts]) for k in range(4)]


def score(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    m = AnomalyMetrics()
    m.update(maps, Batch(inputs=None, labels=masks))
    return m.compute()


def run_arm(arm: str, seed: int, tex: dict[str, Any], args: argparse.Namespace, encoder: torch.nn.Module
            ) -> dict[str, Any]:
    torch.manual_seed(seed)
    x_eval, masks = tex["x_eval"], tex["masks"]
    if arm == "no_student":
        base = FeatureMeanBaseline(encoder, (0, 1, 2, 3), "dbfad")
        base.fit([tex["x_train"][i:i + 50] for i in range(0, len(tex["x_train"]), 50)])
        t0 = time.perf_counter()
        maps = torch.cat([base(x_eval[i:i + 50]) for i in range(0, len(x_eval), 50)])
        ms = 1000 * (time.perf_counter() - t0) / len(x_eval)  # its own encoder pass included
        return {**score(maps, masks), "ms_per_crop": ms, "steps": 0}
    student = (rd4ad_student() if arm == "rd4ad" else dbfad_student())
    student.load_encoder(encoder)
    mode = "rd4ad" if arm == "rd4ad" else "dbfad"
    levels = student.levels
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999) if arm == "rd4ad" else (0.9, 0.999))
    gen = torch.Generator().manual_seed(seed)
    ftrain = tex["f_train"]
    n = len(ftrain[0])
    student.train()
    t0 = time.perf_counter()
    losses = []
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(args.steps):
        if pos + args.batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + args.batch]
        pos += args.batch
        feats = [f[idx] for f in ftrain]
        loss = cosine_map_distance(student.rebuild(feats), [feats[k] for k in levels], mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    train_s = time.perf_counter() - t0
    student.eval()
    fe = tex["f_eval"]
    with torch.no_grad():
        t0 = time.perf_counter()
        maps = torch.cat([anomaly_map(student.rebuild([f[i:i + 50] for f in fe]), [fe[k][i:i + 50] for k in levels],
                                      (64, 64), mode, student.sigma) for i in range(0, len(x_eval), 50)])
        ms = 1000 * (time.perf_counter() - t0) / len(x_eval) + tex["encoder_ms"]
    return {**score(maps, masks), "ms_per_crop": ms, "steps": args.steps, "train_s": train_s,
            "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:])}


def load_texture(name: str, args: argparse.Namespace, encoder: torch.nn.Module) -> dict[str, Any]:
    """The crops and the teacher's features of them, computed once per texture and budget and kept in
    benchmarks/work/ (git-ignored), so every arm and seed (and a second process) reads the same teacher pass."""
    cache = WORK / f"anomaly_{name}_{args.train_crops}_{args.eval_normal}_{args.eval_defect}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    tr = train_crops(name, args.train_crops, 64, 320, seed=0)
    ev = eval_crops(name, args.eval_normal, args.eval_defect, 64, 320, seed=1234)
    x_train, x_eval = normalise(tr.images), normalise(ev.images)
    t0 = time.perf_counter()
    f_eval = features(encoder, x_eval)
    encoder_ms = 1000 * (time.perf_counter() - t0) / len(x_eval)
    tex = {"x_train": x_train, "f_train": features(encoder, x_train), "x_eval": x_eval, "f_eval": f_eval,
           "masks": ev.masks, "encoder_ms": encoder_ms}
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")  # one per process: parallel seeds may race
    torch.save(tex, tmp)
    tmp.replace(cache)
    return tex


def table(results: dict[str, Any]) -> str:
    lines = ["| texture | arm | seeds | image AUROC | pixel AUROC | ms / crop | image AUROC - no_student (paired) |",
             "|---|---|---|---|---|---|---|"]
    verdict_rows = {}
    for tex in TEXTURES:
        base = {int(k.split("/")[-1]): v for k, v in results.items() if k.startswith(f"{tex}/no_student/")}
        for arm in ARMS:
            runs = {int(k.split("/")[-1]): v for k, v in results.items() if k.startswith(f"{tex}/{arm}/")}
            if not runs:
                continue

            def ms(key: str, runs: dict = runs) -> str:
                vals = [r[key] for r in runs.values()]
                sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
                return f"{statistics.mean(vals):.3f} +- {sd:.3f}"

            diffs = [runs[s]["image_auroc"] - base[s]["image_auroc"] for s in runs if s in base]
            d = (f"{statistics.mean(diffs):+.3f} +- {statistics.stdev(diffs):.3f}" if len(diffs) > 1
                 else "n/a") if arm != "no_student" else "-"
            lines.append(f"| {tex} | {arm} | {len(runs)} | {ms('image_auroc')} | {ms('pixel_auroc')} | "
                         f"{statistics.mean(r['ms_per_crop'] for r in runs.values()):.1f} | {d} |")
            verdict_rows[(tex, arm)] = (statistics.mean(r["image_auroc"] for r in runs.values()),
                                        statistics.mean(diffs) if diffs else float("nan"), len(runs))
    out = ["\n".join(lines), ""]
    for arm in ("dbfad", "rd4ad"):
        got = [(t, *verdict_rows[(t, arm)]) for t in TEXTURES if (t, arm) in verdict_rows]
        done = [(t, a, d) for t, a, d, n in got if n >= 3]  # textures with all 3 seeds
        high = [t for t, a, _ in done if a >= 0.90]
        low = [t for t, a, _ in done if a < 0.90]
        beats = [t for t, _, d in done if d > 0]
        if len(high) >= 2 and len([t for t in beats if t in high]) >= 2:
            verdict = "**works**"
        elif len(low) >= 2:
            verdict = "**missed** (2 of the 3 textures can no longer reach 0.90)"
        else:
            verdict = "incomplete"
        out.append(f"- {arm}: {len(done)} of 3 textures finished (3 seeds); image AUROC >= 0.90 on "
                   f"{', '.join(high) or 'none'}; below on {', '.join(low) or 'none'}; beats no_student on "
                   f"{', '.join(beats) or 'none'} -> {verdict}")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--textures", nargs="+", default=list(TEXTURES))
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train-crops", type=int, default=500)
    p.add_argument("--eval-normal", type=int, default=200)
    p.add_argument("--eval-defect", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--table", action="store_true", help="only rewrite the table (merging --inputs into --out)")
    p.add_argument("--inputs", type=Path, nargs="*", default=[], help="result files of parallel runs to merge")
    args = p.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = json.loads(args.out.read_text())["runs"] if args.out.exists() else {}
    config = {}
    for extra in args.inputs:  # parallel processes (one per seed) write their own files
        other = json.loads(extra.read_text())
        results.update(other["runs"])
        config = other["config"]
    if args.inputs:
        write_json(args.out, {"config": config, "runs": results}, sort_keys=True)
    if not args.table:
        encoder = MODELS["resnet56"](num_classes=10)
        load_weights_into(encoder, TEACHER)
        encoder.eval().requires_grad_(False)
        for seed in args.seeds:  # seed-major: every texture's first seed before any second seed
            for name in args.textures:
                todo = [a for a in args.arms if f"{name}/{a}/{seed}" not in results]
                if not todo:
                    continue
                tex = load_texture(name, args, encoder)
                for arm in todo:
                    r = run_arm(arm, seed, tex, args, encoder)
                    results[f"{name}/{arm}/{seed}"] = r
                    print(name, arm, seed, {k: round(v, 4) for k, v in r.items()}, flush=True)
                    kept = {k: v for k, v in vars(args).items() if k in ("steps", "batch", "train_crops",
                                                                         "eval_normal", "eval_defect")}
                    write_json(args.out, {"config": kept, "runs": results}, sort_keys=True)
    md = table(results)
    args.out.with_suffix(".md").write_text(
        "Row 12, reverse distillation on real textures with SYNTHETIC defects (benchmarks/anomaly_rd.py; "
        f"{results and next(iter(results.values())).get('steps', '')} steps where trained).\n\n" + md)
    print(md)


if __name__ == "__main__":
    main()
