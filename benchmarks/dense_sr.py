"""Benchmark: DSCLoRA on x2 super-resolution, the demonstration of its spec (methods/dense.md row 2).

    python benchmarks/dense_sr.py                 # background, nice -n 10; a CPU pilot (about an hour, shared CPU)
    python benchmarks/dense_sr.py --table-only    # rebuild the table from benchmarks/results/dense_sr.json

Data: CIFAR-10 (JPEG) as HR 32 x 32, LR 16 x 16 by antialiased bicubic; 1,600 training images, 1,000 test images
(configs/super_resolution/_base.yaml); second domain: 200 texture crops 64 -> 32 of scikit-image's brick, grass
and gravel (test rows 320-511). Every run is `distill train configs/super_resolution/<recipe>.yaml` in its own
single-thread process (results as they finish in benchmarks/results/dense_sr.json; rerunning skips finished runs):

- stages, once: ``base`` (SPAN-26, L1, N = 100 steps) and ``teacher`` (SPAN-48, L1, 2N = 200 steps), run side by side;
- arms at equal steps (100) and learning rate (5e-4) from the base, seeds 0-2: (a) ``finetune_l1`` full fine-tune,
  (b) ``convlora_l1`` ConvLoRA with L1 only, (c) ``dsclora`` (teacher SPAN-48, cached), and ``dsclora_self``
  (teacher = the base).

For each ConvLoRA run the script also loads ``student_merged.safetensors`` into a plain SPAN-26 and checks the
parameter count against SPAN-26 and the output against the unmerged model (max abs difference). Spec "Works if":
(c) > (b), (c) >= (a) + 0.02 dB, and the merged model has SPAN-26's parameter count and the unmerged output within
1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from verdicts_families import dense_sr_verdicts, verdict_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "super_resolution"
ARMS = ["finetune_l1", "convlora_l1", "dsclora", "dsclora_self"]
LORA_ARMS = {"convlora_l1", "dsclora", "dsclora_self"}
#: the teacher cache of each cached-teacher arm (under the work folder)
CACHES = {"dsclora": "teacher_cache", "dsclora_self": "self_teacher_cache"}
#: texture test crops (64 -> 32) of the second domain
TEX_N = 200


def train(config: Path, out: Path, sets: list[str]) -> dict[str, Any]:
    """One ``distill train`` process (single thread); returns its summary.json."""
    if (out / "summary.json").exists() and (out / "student.safetensors").exists():
        return json.loads((out / "summary.json").read_text())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "distill", "train", str(config), "--output-dir", str(out), "--restart"]
    for s in sets:
        cmd += ["--set", s]
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((out / "summary.json").read_text())


def wait_summary(run: Path, poll_s: float = 20.0) -> dict[str, Any]:
    """The summary of a run started by another process (``--stages-running``), once it has finished."""
    while not ((run / "summary.json").exists() and (run / "student.safetensors").exists()):
        time.sleep(poll_s)
    time.sleep(1.0)
    return json.loads((run / "summary.json").read_text())


@torch.no_grad()
def texture_and_merge(run: Path, lora: bool) -> dict[str, Any]:
    """Y-PSNR / SSIM of the run's student on the texture test crops (64 -> 32), and for ConvLoRA runs the merge
    check (parameter count, max |merged - unmerged| on the texture inputs)."""
    from safetensors.torch import load_file

    from distill.models.conv_lora import apply_conv_lora, merge_conv_lora
    from distill.tasks.super_resolution.data import make_pairs, texture_crops
    from distill.tasks.super_resolution.models import span
    from distill.tasks.super_resolution.task import psnr_y, ssim_y

    torch.set_num_threads(1)
    crops = texture_crops(TEX_N, 12345, "test", textures=("brick", "grass", "gravel"), hr_size=64, split_row=320)
    pairs = make_pairs(crops, 2, "textures")
    x, hr = pairs.lr.float() / 255.0, pairs.hr.float() / 255.0
    out: dict[str, Any] = {}
    model = span(2)
    if lora:
        cfg = json.loads((run / "distill_config.json").read_text())
        targets = {k: (v["rank"], v["alpha"]) for k, v in cfg["student"]["conv_lora"].items()}
        apply_conv_lora(model, targets)
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = load_file(str(run / "student.safetensors"))
    model.load_state_dict(state)
    model.train()  # unmerged forward (no BatchNorm in SPAN, so train mode changes nothing else)
    sr = torch.cat([model(c) for c in x.split(50)])
    out["tex_psnr"] = float(psnr_y(sr, hr, 2).mean())
    out["tex_ssim"] = float(ssim_y(sr, hr, 2).mean())
    if lora:
        plain = span(2)
        plain.load_state_dict(load_file(str(run / "student_merged.safetensors")))
        merged = merge_conv_lora(model)
        base_params = sum(p.numel() for p in span(2).parameters())
        out["merged_params"] = sum(p.numel() for p in plain.parameters())
        out["base_params"] = base_params
        out["merged_params_inplace"] = sum(p.numel() for p in merged.parameters())
        out["merge_max_abs_diff"] = float(max((plain(c) - m).abs().max() for c, m in zip(x.split(50), sr.split(50))))
    return out


def bicubic_reference() -> dict[str, float]:
    """Bicubic upsampling of the LR test images, CIFAR (the recipes' test subset) and textures: the floor a trained
    model should pass."""
    import torch.nn.functional as F

    from distill.config import load_config
    from distill.core.family import FAMILIES
    from distill.tasks.super_resolution.data import make_pairs, texture_crops
    from distill.tasks.super_resolution.task import psnr_y, ssim_y

    def up(lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr.float() / 255.0, scale_factor=2, mode="bicubic", align_corners=False)

    crops = texture_crops(TEX_N, 12345, "test", textures=("brick", "grass", "gravel"), hr_size=64, split_row=320)
    p = make_pairs(crops, 2, "textures")
    out = {"tex_psnr": float(psnr_y(up(p.lr), p.hr.float() / 255.0, 2).mean())}
    cfg = load_config(CONFIGS / "base.yaml")
    evald = FAMILIES.get("super_resolution").load(cfg).eval
    sr, hr = up(evald.lr), evald.hr.float() / 255.0
    out["psnr"] = float(psnr_y(sr, hr, 2).mean())
    out["ssim"] = float(ssim_y(sr, hr, 2).mean())
    return out


def mean_sd(v: list[float], nd: int = 3) -> str:
    return f"{statistics.mean(v):.{nd}f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.{nd}f}"


def write_table(results: dict[str, Any], out: Path) -> str:
    runs = results["runs"]
    by = {a: sorted((r for r in runs if r["arm"] == a), key=lambda r: r["seed"]) for a in ARMS}
    st = results.get("stages", {})
    lines = [
        "x2 SR, CIFAR-10 JPEG HR 32 px / LR 16 px (antialiased bicubic), 1,600 train / 1,000 test images; Y-channel "
        "PSNR (dB) and SSIM, 2-px border. Base SPAN-26 (L1, 100 steps): "
        f"{st.get('base', {}).get('psnr', float('nan')):.3f} dB; teacher SPAN-48 (L1, 200 steps): "
        f"{st.get('teacher', {}).get('psnr', float('nan')):.3f} dB; bicubic: "
        f"{results.get('bicubic', {}).get('psnr', float('nan')):.3f} dB. Arms: 100 steps from the base, Adam lr 5e-4 "
        "cosine, batch 16. Texture = 200 crops 64 -> 32 of brick/grass/gravel (test rows); bicubic there: "
        f"{results.get('bicubic', {}).get('tex_psnr', float('nan')):.3f} dB.",
        "",
        "| arm | CIFAR PSNR mean ± sd | SSIM | vs (b) convlora_l1, paired | vs (a) finetune_l1, paired | texture PSNR "
        "| trained params | merged params / max abs diff | per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def paired(arm: str, ref: str) -> str:
        a = {r["seed"]: r["psnr"] for r in by[arm]}
        b = {r["seed"]: r["psnr"] for r in by[ref]}
        d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
        return f"{mean_sd(d)} (n={len(d)})" if d and arm != ref else ""

    for arm, recs in by.items():
        if not recs:
            continue
        ps = [r["psnr"] for r in recs]
        merged = ""
        if arm in LORA_ARMS:
            merged = (f"{recs[0]['merged_params']} (SPAN-26 {recs[0]['base_params']}) / "
                      f"{max(r['merge_max_abs_diff'] for r in recs):.1e}")
        ssim = mean_sd([r["ssim"] for r in recs], 4)
        lines.append(f"| {arm} | {mean_sd(ps)} | {ssim} | {paired(arm, 'convlora_l1')} "
                     f"| {paired(arm, 'finetune_l1')} | {mean_sd([r['tex_psnr'] for r in recs])} | "
                     f"{recs[0].get('trainable', '')} | {merged} | {', '.join(f'{p:.3f}' for p in ps)} |")
    lines += ["", "Spec: (c) > (b), (c) >= (a) + 0.02 dB, merged = SPAN-26 size and output within 1e-5. "
              + verdict_text(dense_sr_verdicts(results)) + "."]
    text = "\n".join(lines) + "\n"
    (out / "dense_sr.md").write_text(text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "dense_sr")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--stages-running", action="store_true",
                   help="the stages were started by an earlier invocation that was stopped: wait for their results")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to every run (a smoke test: --set data.train_size=64 --set train.epochs=1)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("dense_sr.json" if not args.sets else "dense_sr_smoke.json")
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": [], "stages": {}}
    if args.table_only:
        if "psnr" not in results.get("bicubic", {}):  # results of before the CIFAR reference was added
            results["bicubic"] = bicubic_reference()
            write_json(path, results)
        print(write_table(results, args.out))
        return 0
    work = args.work.resolve()
    results["bicubic"] = bicubic_reference()
    start = time.perf_counter()
    base_w = work / "base" / "student.safetensors"
    teacher_w = work / "teacher" / "student.safetensors"
    stage_futs = {}
    stage_pool = ThreadPoolExecutor(2)  # the two stages side by side, unless they are already running elsewhere
    for name in ("base", "teacher"):
        if args.stages_running:
            stage_futs[name] = stage_pool.submit(wait_summary, work / name)
        else:
            stage_futs[name] = stage_pool.submit(train, CONFIGS / f"{name}.yaml", work / name, args.sets)

    def stage(name: str) -> None:
        s = stage_futs[name].result()
        results["stages"][name] = {**s["final"], "steps": s["steps"], "wall_time_s": s["wall_time_s"]}

    def sets(arm: str, seed: int) -> list[str]:
        s = [f"seed={seed}", f"student.weights={base_w}"]
        if arm == "dsclora":
            s += [f"teacher.weights={teacher_w}", f"teacher.cache.path={work / CACHES['dsclora']}"]
        if arm == "dsclora_self":
            s += [f"teacher.weights={base_w}", f"teacher.cache.path={work / CACHES['dsclora_self']}"]
        return s + args.sets

    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    # seed by seed over the three compared arms, so that whole seeds finish first (a cached-teacher arm's first run
    # builds its cache long before its next seed starts), then the self-teacher variant
    compared = [a for a in args.arms if a != "dsclora_self"]
    queue = [(a, s) for s in args.seeds for a in compared if (a, s) not in done]
    if "dsclora_self" in args.arms:
        queue += [("dsclora_self", s) for s in args.seeds if ("dsclora_self", s) not in done]

    cache_locks = {a: threading.Lock() for a in CACHES}

    def one(arm: str, seed: int) -> dict[str, Any]:
        stage("base")  # every arm starts from the base; only dsclora waits for the teacher
        if arm == "dsclora":
            stage("teacher")
        run = work / f"seed{seed}" / arm
        s = None
        if arm in cache_locks:  # the first run of a cached-teacher arm builds the cache; its other seeds wait for it
            with cache_locks[arm]:
                if not (work / CACHES[arm] / "manifest.json").exists():
                    s = train(CONFIGS / f"{arm}.yaml", run, sets(arm, seed))
        if s is None:
            s = train(CONFIGS / f"{arm}.yaml", run, sets(arm, seed))
        rec = {"arm": arm, "seed": seed, **s["final"], "steps": s["steps"], "wall_time_s": s["wall_time_s"]}
        rec.update(texture_and_merge(run, arm in LORA_ARMS))
        return rec

    with ThreadPoolExecutor(args.jobs) as pool:
        for rec in pool.map(lambda t: one(*t), queue):
            results["runs"].append(rec)
            write_json(path, results)
            print(f"{rec['arm']} seed {rec['seed']}: {rec['psnr']:.3f} dB", flush=True)
    stage("base")
    stage("teacher")
    stage_pool.shutdown()
    results["wall_time_s"] = results.get("wall_time_s", 0.0) + time.perf_counter() - start
    write_json(path, results)
    print(write_table(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
