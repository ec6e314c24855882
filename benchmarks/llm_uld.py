"""Demonstration: cross-tokenizer distillation with ULD (issue 22, item 3).

    nice -n 10 python benchmarks/llm_uld.py                    # 3 seeds x {ce_char, uld_char}; resumable
    python benchmarks/llm_uld.py --quick                       # a smoke run (minutes, a temp folder)
    python benchmarks/llm_uld.py --tag lam0.5 --arms uld_char --set methods.1.weight=0.5   # a variant

Teacher: SmolLM2-135M-Instruct (BPE, 49,152 tokens; ../shared GGUF Q4_1 dequantised). Student: the small Llama of
``configs/tinyshakespeare/_char.yaml`` with a character-level tokenizer over tinyshakespeare (66 tokens), trained
from scratch. Arms (recipes of configs/tinyshakespeare/, equal data, order, steps and initialisation per seed):

* ``ce_char``: next-character cross-entropy alone (the no-teacher twin);
* ``uld_char``: the same + 1.5 x ULD (sorted-probability L1, Boizard et al. 2024) against the teacher's next-token
  distribution at the last character of each teacher token (``data.cross_tokenizer``, alignment ``token_end``).
  The teacher's top-128 log-probabilities on the training rows are computed once and stored (the teacher is
  fixed), shared by every seed and variant.

Metric: held-out bits per character (the student's next-character NLL / ln 2 on the first 32 held-out blocks of
256 characters); lower is better. Verdict: ULD works here if its mean over the seeds is below the twin's (the
paired difference uld - ce < 0). Every finished run is written to the JSON at once (resumable); ``--tag`` writes
a variant's runs beside the main ones (``llm_uld_<tag>.json``) and the table then lists them too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from portable import write_json  # noqa: E402
from sweep import Sweep, discover_arms, previous_runs, summarise  # noqa: E402

from distill.experiment import Experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "tinyshakespeare"
ARMS = ["ce_char", "uld_char"]
BASELINE = "ce_char"
QUICK = ["data.train_blocks=4", "data.eval_blocks=2", "data.block_size=64", "train.max_steps=3",
         "train.epochs=3", "train.batch_size=2", "train.eval_every=3"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def after_fit(arm: str, exp: Experiment) -> dict[str, Any]:
    metrics = exp.trainer.evaluate()
    summary = json.loads((exp.trainer.run_dir / "summary.json").read_text())
    uld = [m for m in exp.config.methods if m.name == "uld"]
    out = {"val_bpc": round(metrics["nll"] / math.log(2), 5), "val_nll": round(metrics["nll"], 5),
           "steps": summary["steps"], "train_seconds": round(float(summary["wall_time_s"]), 1),
           "uld_weight": uld[0].weight if uld else 0.0}
    if exp.config.data.cross_tokenizer is not None:
        ct = exp.config.data.cross_tokenizer
        out["alignment"], out["topk"] = ct.alignment, ct.topk
        out["uld_options"] = uld[0].options() if uld else {}
    log(f"{arm}: {out}")
    return out


def table(json_paths: list[Path], seeds: list[int]) -> tuple[list[str], dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for p in json_paths:
        content = json.loads(p.read_text()) if p.exists() else {}
        if "runs" in content:
            tag = content.get("args", {}).get("tag")
            for r in content["runs"]:
                if r["seed"] in seeds:
                    runs.append({**r, "arm": r["arm"] if not tag or r["arm"] == BASELINE else f"{r['arm']}[{tag}]"})
    # a variant file may rerun the baseline; keep one record per (arm, seed), the first (main file) wins
    uniq: dict[tuple[str, int], dict[str, Any]] = {}
    for r in runs:
        uniq.setdefault((r["arm"], r["seed"]), r)
    summaries = summarise(uniq.values(), metric="val_bpc", baseline=BASELINE, order=ARMS, scale=1.0)
    lines = ["| arm | held-out bits/char, mean ± sd | vs ce_char, paired (95% CI) | per seed | verdict |",
             "|---|---|---|---|---|"]
    verdicts = {}
    for s in summaries:
        if s.arm == BASELINE:
            verdict = "baseline"
        elif s.diff is None or s.common < len(seeds):
            verdict = f"incomplete ({s.common}/{len(seeds)} seeds)"
        else:
            verdict = "beats its twin on the mean" if s.diff < 0 else "misses (not below its twin)"
            if s.ci is not None and s.ci[0] <= 0 <= s.ci[1]:
                verdict += "; 95% CI includes 0 (not significant)"
        verdicts[s.arm] = {"mean": s.mean, "sd": s.sd, "diff": s.diff, "ci": s.ci, "seeds": s.values,
                           "verdict": verdict}
        diff = "" if s.diff is None else f"{s.diff:+.4f}" + (f" [{s.ci[0]:+.4f}, {s.ci[1]:+.4f}]" if s.ci else "")
        per_seed = ", ".join(f"{v:.4f}" for v in s.values.values())
        lines.append(f"| {s.arm} | {s.mean:.4f} ± {s.sd:.4f} | {diff} | {per_seed} | {verdict} |")
    return lines, verdicts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "llm_uld"))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tag", default=None, help="a variant's name: its runs go to llm_uld_<tag>.json")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sets = list(args.sets)
    if args.quick:
        args.out = args.work = tempfile.mkdtemp(prefix="llm_uld_")
        sets = QUICK + sets
    out_dir, work = Path(args.out), Path(args.work).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "llm_uld" + (f"_{args.tag}" if args.tag else "")
    json_path = out_dir / f"{name}.json"
    arms = {a: f for a, f in discover_arms(CONFIGS, ARMS).items() if a in args.arms.split(",")}
    res: dict[str, Any] = {"args": {"sets": sets, "tag": args.tag, "quick": args.quick}, "runs": []}
    res["runs"] = previous_runs(json_path, res, ("sets", "tag", "quick"))
    if res["runs"]:
        log(f"resuming: {sorted((r['arm'], r['seed']) for r in res['runs'])} done")
    tag_dir = f"_{args.tag}" if args.tag else ""

    def overrides(arm: str, seed: int) -> list[str]:
        o = [f"seed={seed}", f"output_dir={work / 'runs' / f'{arm}{tag_dir}_s{seed}'}"]
        if arm != BASELINE:  # one store per alignment and k, shared by every seed and variant that reads it
            form = "_".join(a.split(".")[-1].replace("=", "-") for a in sets if a.startswith("data.cross_tokenizer."))
            o.append(f"data.cross_tokenizer.cache={work / ('teacher_char_store' + (f'_{form}' if form else ''))}")
        return o + sets

    sweep = Sweep(arms, seeds, json_path, overrides, metric="val_bpc", match_args=("sets", "tag", "quick"),
                  after_fit=after_fit, repo=REPO, log=log, scale=1.0, unit=" bpc")
    sweep.run(res)
    write_json(json_path, res, indent=1)
    main_json = out_dir / "llm_uld.json"
    files = [main_json, *sorted(p for p in out_dir.glob("llm_uld_*.json"))]
    lines, verdicts = table(files, seeds)
    summary_path = out_dir / "llm_uld.summary.json"
    write_json(summary_path, {"metric": "held-out bits per character (lower is better)", "seeds": seeds,
                              "arms": verdicts}, indent=1)
    md = ["# Cross-tokenizer distillation (ULD): SmolLM2-135M (BPE) -> a character-level student", "",
          "Command: `nice -n 10 bash benchmarks/llm_uld_queue.sh` (`python benchmarks/llm_uld.py`, then each variant "
          "with `--tag`; resumable). Held-out bits per character of the character-level student after 240 steps, "
          "lower is better; `uld_char[tag]` rows are the variants (see the queue script for their settings).", "",
          *lines, ""]
    (out_dir / "llm_uld.md").write_text("\n".join(md))
    log(f"wrote {json_path} and {out_dir / 'llm_uld.md'}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
