"""Benchmark: distil SmolLM2-135M-Instruct into a small Llama on tinyshakespeare with the LM divergences.

    python benchmarks/tinyshakespeare.py                 # full run (writes benchmarks/results/tinyshakespeare.*)
    python benchmarks/tinyshakespeare.py --quick         # minutes, a smoke run (writes to a temp folder)
    python benchmarks/tinyshakespeare.py --arms gjsd_on_policy     # on-policy GKD (a live teacher every step)

Every arm is a recipe of ``configs/tinyshakespeare/`` (the same student init, data order, token budget and seed),
swept through ``benchmarks/sweep.py`` / ``build_experiment``; nothing here trains:

1. The teacher (../shared/models/smollm2-135m-instruct, GGUF Q4_1 dequantised) is stored once per cache the arms
   name (``teacher.cache``: top-64, top-8 and top-1 float16 log-probabilities with the tail mass kept, and the
   dense float16 logits), built by the first arm that needs it and reused by the others. A live 135M teacher at
   every step would cost ~3x the student's step on 2 shared CPU cores.
2. The teacher also runs once on the validation blocks (an evaluation, here): its perplexity and top-1 tokens.
3. Arms: CE alone (no teacher); forward KL, reverse KL, generalised JSD (beta 0.5), skew KL (alpha 0.1) and TAID
   (t_start 0.4, alpha 5e-4), all from the top-64 cache; forward KL from top-1, top-8 and the dense teacher (the
   store's perplexity cost); ``seqkd_ce`` (CE on the teacher's sampled continuations, ``data.sequence_kd``);
   ``gjsd_on_policy`` (opt-in: GKD with a live teacher).
Metrics, measured on each trained run: validation perplexity, top-1 agreement with the teacher, training tokens per
second; and the size of each teacher cache and the teacher's mean tail mass outside its top k. Each finished arm
is written to the JSON at once (resumable). ``--set KEY=VALUE`` changes every arm (e.g. ``data.train_blocks=256``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from portable import write_json  # noqa: E402
from sweep import Sweep, discover_arms, load_recipe, previous_runs  # noqa: E402

from distill.core.family import FAMILIES  # noqa: E402
from distill.core.hidden import HiddenStates  # noqa: E402
from distill.experiment import Experiment, resolve_path  # noqa: E402
from distill.llm.models import load_gguf_model  # noqa: E402
from distill.train.evaluate import evaluate_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "tinyshakespeare"
ARMS = ["ce", "fkl", "rkl", "gjsd_0.5", "skl_0.1", "taid", "fkl_dense", "fkl_k8", "fkl_k1", "seqkd_ce",
        "gjsd_on_policy"]
DEFAULT_ARMS = [a for a in ARMS if a != "gjsd_on_policy"]  # SRKL and TVD are implemented but left out: CPU budget
QUICK = ["data.train_blocks=8", "data.eval_blocks=2", "data.block_size=32", "train.max_steps=3", "train.epochs=2",
         "train.eval_every=2", "train.warmup_epochs=0.5"]
QUICK_SEQKD = ["data.sequence_kd.prefix_tokens=8", "data.sequence_kd.max_new_tokens=24"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def teacher_eval(path: Path, sets: list[str], work: Path) -> tuple[dict[str, Any], torch.Tensor]:
    """The teacher's perplexity and top-1 tokens on the validation blocks of the recipe ``path`` (computed once
    per data setting, kept in ``work``)."""
    _, cfg = load_recipe(path, sets)
    loaded = FAMILIES.get(cfg.task).load(cfg)
    val, task = loaded.eval, loaded.task
    key = val.fingerprint()[:16]
    saved = work / f"val_teacher-{key}.pt"
    if saved.exists():
        state = torch.load(saved, weights_only=True)
        return state["metrics"], state["top1"]
    teacher = load_gguf_model(resolve_path(cfg.data.tokenizer, cfg.base_dir))
    with torch.no_grad():
        metrics = evaluate_model(teacher, task, val, batch_size=4, device="cpu")
        outs = (task.forward(teacher, task.fetch(val, torch.arange(i, min(i + 4, len(val)))))
                for i in range(0, len(val), 4))  # logits, or hidden states and head (data.chunk_tokens)
        top1 = torch.cat([o.argmax() if isinstance(o, HiddenStates) else o.argmax(-1) for o in outs])
    record = {"val_perplexity": round(metrics["perplexity"], 3), "val_nll": round(metrics["nll"], 5)}
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"metrics": record, "top1": top1}, saved)
    return record, top1


def evaluate_run(exp: Experiment, top1: torch.Tensor) -> dict[str, Any]:
    """Validation perplexity and top-1 agreement with the teacher of a trained run, and its training throughput."""
    val = exp.eval_data
    val.meta["teacher_top1"] = top1
    metrics = evaluate_model(exp.student, exp.task, val, batch_size=8, device="cpu")
    summary = json.loads((exp.trainer.run_dir / "summary.json").read_text())
    train = exp.train_data
    batch = exp.trainer.cfg.batch_size
    tokens = int(round(summary["steps"] * batch * float(train.attention_mask.sum()) / len(train)))
    seconds = float(summary["wall_time_s"])
    out = {"steps": summary["steps"], "train_tokens": tokens, "train_seconds": round(seconds, 1),
           "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
           "val_perplexity": round(metrics["perplexity"], 3), "val_nll": round(metrics["nll"], 5),
           "teacher_agreement": round(metrics.get("teacher_agreement", float("nan")), 5),
           "teacher": teacher_signal(exp)}
    for m in exp.methods.methods.values():
        if hasattr(m, "t"):
            out["taid_t_final"] = round(float(m.t), 6)
    return out


def store_form(cache: dict[str, Any] | Any) -> str:
    """The stored form of the teacher a ``teacher.cache`` section (a recipe's dict or the parsed settings) names:
    ``hidden`` (hidden states in float32 + head; ``hidden_float16`` etc. in another dtype), ``dense`` (logits) or
    ``k<k>`` (top-k log-probabilities)."""
    get = cache.get if isinstance(cache, dict) else lambda key: getattr(cache, key, None)
    if get("hidden"):
        return "hidden" if get("dtype") in (None, "float32") else f"hidden_{get('dtype')}"
    return "dense" if get("topk") is None else f"k{get('topk')}"


def teacher_signal(exp: Experiment) -> str:
    cfg = exp.config
    if cfg.data.sequence_kd is not None or cfg.teacher is None:
        return "none"
    c = cfg.teacher.cache
    return "live" if c is None else store_form(c)


def arm_overrides(recipe: Path, run_dir: Path, work: Path, seed: int, sets: list[str],
                  quick: bool = False) -> list[str]:
    """The sweep's assignments for one run of the arm ``recipe``: its seed and run folder, one teacher cache folder
    per stored form (shared by the arms that read it) and SeqKD's continuations under ``work``."""
    raw, _ = load_recipe(recipe, [])
    o = [f"seed={seed}", f"output_dir={run_dir}"]
    cache = (raw.get("teacher") or {}).get("cache")
    if cache:
        o.append(f"teacher.cache.path={work / f'teacher_{store_form(cache)}'}")
    if "sequence_kd" in raw.get("data", {}):
        o.append(f"data.sequence_kd.path={work / 'seqkd'}")
        o += QUICK_SEQKD if quick else []
    return o + sets


def cache_stats(path: Path, tokens: int) -> dict[str, Any]:
    """Size of a teacher cache folder (bytes per token: of the per-example shards; what is stored once, such as a
    hidden-state cache's output head, apart) and, for a top-k cache, the teacher's mean tail mass outside its
    top k."""
    manifest = json.loads((path / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".npy")
    once = sum(f.stat().st_size for f in path.glob("extra-*.npy"))  # stored once per cache (a model's head)
    k = manifest["meta"].get("k")
    build = manifest["meta"].get("build_seconds")
    tail = None
    if manifest["meta"]["kind"] == "topk":
        parts = [np.load(path / s["files"]["topk_logprobs"]["file"]).astype(np.float32) for s in manifest["shards"]]
        lp = torch.from_numpy(np.concatenate(parts))
        tail = float((1 - lp.exp().sum(-1)).clamp(0, 1).mean())
    if manifest["meta"]["kind"] == "hidden":
        t = manifest["tensors"]["hidden"]
        name = f"dense: hidden states ({t['dtype']}, {t['shape'][-1]} per token) + output head once"
    elif k:
        name = f"top-{k} ({manifest['tensors']['topk_indices']['dtype']} ids + float16 log-probs)"
    else:
        name = f"dense ({manifest['tensors']['logits']['dtype']})"
    return {"name": name, "megabytes": size / 1e6, "bytes_per_token": (size - once) / tokens,
            "once_megabytes": once / 1e6, "mean_tail_mass": tail, "build_seconds": build}


def write_markdown(res: dict[str, Any], path: Path, command: str) -> None:
    t = res.get("teacher", {})
    lines = ["# tinyshakespeare: SmolLM2-135M-Instruct -> small Llama, LM divergences", "",
             f"Command: `{command}`", "", "Recipes: configs/tinyshakespeare/ (one file per arm; settings in "
             "_base.yaml).", "",
             f"Teacher (SmolLM2-135M-Instruct, dequantised Q4_1) on the same validation blocks: perplexity "
             f"{t.get('val_perplexity', float('nan')):.2f}.", "",
             "| arm | teacher signal | val perplexity | teacher top-1 agreement | train tokens/s |",
             "|---|---|---|---|---|"]
    order = {a: i for i, a in enumerate(ARMS)}
    for r in sorted(res["runs"], key=lambda r: order.get(r["arm"], len(order))):
        lines.append(f"| {r['arm']} | {r['teacher']} | {r['val_perplexity']:.2f} | {r['teacher_agreement']:.4f} "
                     f"| {r['tokens_per_second'] or 0:.0f} |")
    if res.get("stores"):
        lines += ["", "Teacher caches (training blocks):", "",
                  "| store | size (MB) | bytes/token | teacher mean tail mass outside top k |", "|---|---|---|---|"]
        for s in res["stores"].values():
            tail = "-" if s["mean_tail_mass"] is None else f"{s['mean_tail_mass']:.4f}"
            lines.append(f"| {s['name']} | {s['megabytes']:.1f} | {s['bytes_per_token']:.0f} | {tail} |")
    lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", type=Path, default=CONFIGS)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "tinyshakespeare"),
                    help="runs and teacher caches (large: the dense cache is 2 V bytes per token)")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a --set assignment applied to every arm, e.g. data.train_blocks=256")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    arms_wanted = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms_wanted if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm {unknown[0]!r}; choose from {ARMS}")
    sets = list(args.sets)
    if args.quick:
        arms_wanted = ["ce", "gjsd_0.5", "taid", "fkl_dense", "fkl_k1", "seqkd_ce", "gjsd_on_policy"]
        args.out = args.work = tempfile.mkdtemp(prefix="tinyshakespeare_")
        sets = QUICK + sets
    out_dir, work = Path(args.out), Path(args.work).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "tinyshakespeare" if not args.quick else "tinyshakespeare_quick"
    json_path = out_dir / f"{name}.json"
    command = "python benchmarks/tinyshakespeare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    arms = {a: f for a, f in discover_arms(args.configs, ARMS).items() if a in arms_wanted}

    res: dict[str, Any] = {"args": {"configs": str(args.configs), "sets": sets, "seed": args.seed}, "runs": [],
                           "stores": {}}
    res["runs"] = previous_runs(json_path, res, ("sets", "seed"))
    if res["runs"]:
        res["stores"] = json.loads(json_path.read_text()).get("stores", {})
        log(f"resuming: {sorted(r['arm'] for r in res['runs'])} done")
    res["teacher"], top1 = teacher_eval(arms.get("ce", next(iter(arms.values()))), [*sets, f"seed={args.seed}"],
                                        work)

    def overrides(arm: str, seed: int) -> list[str]:
        return arm_overrides(arms[arm], work / "runs" / arm, work, seed, sets, args.quick)

    def after_fit(arm: str, exp: Experiment) -> dict[str, Any]:
        record = evaluate_run(exp, top1)
        c = exp.config.teacher.cache if exp.config.teacher is not None else None
        if c is not None:
            tokens = len(exp.train_data) * exp.train_data.input_ids.shape[1]
            res["stores"][record["teacher"]] = cache_stats(Path(c.path), tokens)
        log(f"arm {arm}: {record}")
        return record

    sweep = Sweep(arms, [args.seed], json_path, overrides, metric="val_perplexity", match_args=("sets", "seed"),
                  after_fit=after_fit, repo=REPO, log=log, scale=1.0, unit="")
    sweep.run(res)
    write_json(json_path, res, indent=1)
    write_markdown(res, out_dir / f"{name}.md", command)
    log(f"wrote {json_path}")


if __name__ == "__main__":
    main()
