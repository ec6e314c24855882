"""Benchmark (issue 17, item 3): the LLM table at ~1M training tokens per arm, 3 seeds.

    python benchmarks/tinyshakespeare_1m.py --stores       # build the teacher stores once (then exit)
    python benchmarks/tinyshakespeare_1m.py                # run every (arm, seed) not done; a second process
                                                           # started the same way takes other (arm, seed)s
    python benchmarks/tinyshakespeare_1m.py --render       # the table again from the JSON
    python benchmarks/tinyshakespeare_1m.py --measure      # seconds per step of each arm kind (6 steps each):
                                                           # results/tinyshakespeare_1m_measure.{json,md}
    python benchmarks/tinyshakespeare_1m.py --measure --render   # that table again from its JSON
    python benchmarks/tinyshakespeare_1m.py --quick        # a smoke run in a temp folder (minutes)

SmolLM2-135M-Instruct -> a 4-layer Llama on tinyshakespeare, recipes ``configs/tinyshakespeare_1m/`` (all 2,398
training blocks, batch 16 x 128 tokens, 596 steps = 1.22M tokens per arm; see ``_base.yaml``). The run machinery is
:mod:`tinyshakespeare`'s (teacher evaluation, evaluation of a trained run, stores' sizes, one cache folder per
stored form); this script adds seeds, a work queue shared by processes, the TAID t curve and the table.

1. Teacher stores and the teacher's own evaluation (``--stores``), paid once: the teacher runs once over the
   training blocks into the hidden-state store (``teacher.cache.hidden``: its final hidden states in float32 and
   its output head, from which the exact dense logits are recomputed; arm ``fkl_dense``); the largest top-k store
   (top-256) is derived from it (the top log-probabilities, float16), and each smaller one (64, 8, 1) from the
   next larger (its first k entries), with no second teacher pass. Then the teacher's perplexity and top-1 tokens on
   the held-out blocks.
2. Arms x seeds 0, 1, 2, seed-major (every arm's seed 0 first). Each process claims an (arm, seed) with a file in
   ``<work>/claims`` (a claim of a process that died is taken over), trains it single-threaded, writes its record to
   the JSON at once (under a lock, merged with what other processes wrote) and renders the table.
3. The table: validation perplexity (all 266 held-out blocks) mean +- sd per arm, the paired difference against CE
   with its 95% t-interval, top-1 agreement with the teacher, each sparse store's perplexity cost against the dense
   one (``STORE_ARMS``: top-1, 8, 64, 256 and top-64 in DistillKit's ``zero`` mode; paired, in %), TAID's t curve
   (first, lowest, last t; the largest lead over its linear floor t_lin = t_start + (t_end - t_start) progress and
   the steps above it) and the verdicts
   (:func:`verdicts.tinyshakespeare_verdicts`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from portable import write_json  # noqa: E402
from sweep import Sweep, discover_arms, load_recipe, paired_difference, save_run, summarise  # noqa: E402
from tinyshakespeare import arm_overrides, cache_stats, evaluate_run, log, store_form, teacher_eval  # noqa: E402

from distill.core.family import FAMILIES  # noqa: E402
from distill.experiment import Experiment, open_teacher_cache  # noqa: E402
from distill.train.checkpoint import checkpoint_folders  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "tinyshakespeare_1m"
ARMS = ["ce", "fkl", "fkl_dense", "rkl", "gjsd_0.5", "skl_0.1", "taid", "taid_no_adaptive", "taid_a5e-3", "fkl_k8",
        "fkl_k1", "fkl_k256", "fkl_zero", "fkl_hidden16", "ce_fkl", "seqkd_ce"]
#: the sparse stores' forward-KL arms, compared with ``fkl_dense`` in the table (arm -> what it reads)
STORE_ARMS = {"fkl_k1": "top-1", "fkl_k8": "top-8", "fkl": "top-64", "fkl_k256": "top-256",
              "fkl_zero": "top-64, `zero` mode", "fkl_hidden16": "hidden states, float16"}
SEEDS = [0, 1, 2]
NAME = "tinyshakespeare_1m"
#: the smoke run: tiny data, two seeds, the arms that exercise every store, the t curve and SeqKD's generation
QUICK = ["data.train_blocks=16", "data.eval_blocks=2", "data.block_size=32", "train.epochs=2", "train.batch_size=4",
         "train.eval_every=2", "train.warmup_epochs=0.5"]
QUICK_ARMS = ["ce", "fkl", "fkl_dense", "fkl_hidden16", "taid", "taid_no_adaptive", "fkl_k1", "seqkd_ce"]
#: ``--measure``: the real batch and block size on 96 training blocks (6 steps), one arm of each kind (rkl, gjsd,
#: skl cost what fkl does: one divergence over the same top-64 rows; top-8 and top-1 less)
MEASURE = ["data.train_blocks=96", "data.eval_blocks=2", "train.epochs=1"]
MEASURE_ARMS = ["ce", "fkl", "fkl_dense", "taid"]
MATCH = ("sets", "configs")  # runs made with other settings are not resumed from


# -- teacher stores ----------------------------------------------------------------------------------------------
def build_stores(arms: dict[str, Path], overrides: Any, log_to: Any = log) -> dict[str, dict[str, Any]]:
    """Every store the arms read, built if missing: the hidden-state one from the live teacher, the largest top-k
    from it, each smaller top-k from the largest (their fingerprints are the live teacher's)."""
    from distill.cache import CacheSettings, TeacherCache, ensure_teacher_cache

    forms: dict[str, tuple[str, Any]] = {}
    for arm in arms:
        raw, cfg = load_recipe(arms[arm], overrides(arm, 0))
        if cfg.teacher is not None and cfg.teacher.cache is not None:
            forms.setdefault(store_form(cfg.teacher.cache), (arm, cfg))
    if not forms:
        return {}
    first = forms.get("hidden", next(iter(forms.values())))
    cfg = first[1]
    family = FAMILIES.get(cfg.task)
    loaded = family.load(cfg)
    tokens = len(loaded.train) * loaded.train.input_ids.shape[1]
    stats: dict[str, dict[str, Any]] = {}
    source: Any = None
    if "hidden" in forms:
        hidden_cfg = forms["hidden"][1]
        t0 = time.perf_counter()
        source = open_teacher_cache(hidden_cfg, family.build_teacher(hidden_cfg, loaded), loaded.task, loaded.train)
        log_to(f"hidden-state store ready ({time.perf_counter() - t0:.0f} s): {source}")
        stats["hidden"] = cache_stats(Path(hidden_cfg.teacher.cache.path), tokens)
    for form in sorted(f for f in forms if f.startswith("hidden_")):  # another dtype: from the float32 store
        c = forms[form][1].teacher.cache
        t0 = time.perf_counter()
        cache = ensure_teacher_cache(Path(c.path), source if source is not None else family.build_teacher(
            forms[form][1], loaded), loaded.task, loaded.train, CacheSettings(hidden=True, dtype=c.dtype),
            build="if_missing", batch_size=64)
        log_to(f"{form} store ready ({time.perf_counter() - t0:.0f} s): {cache}")
        stats[form] = cache_stats(Path(c.path), tokens)
        if "hidden" in forms:
            stats[form]["kl_to_float32"] = hidden_kl(Path(forms["hidden"][1].teacher.cache.path), Path(c.path))
    topk = sorted((int(f[1:]) for f in forms if f.startswith("k")), reverse=True)
    for k in topk:
        c = forms[f"k{k}"][1].teacher.cache
        if source is None:  # no hidden store asked for: the largest top-k from the live teacher
            source = family.build_teacher(forms[f"k{k}"][1], loaded)
        t0 = time.perf_counter()
        settings = CacheSettings(topk=k, dtype=c.dtype)
        cache = ensure_teacher_cache(Path(c.path), source, loaded.task, loaded.train, settings, build="if_missing",
                                     batch_size=64)
        log_to(f"top-{k} store ready ({time.perf_counter() - t0:.0f} s): {cache}")
        stats[f"k{k}"] = cache_stats(Path(c.path), tokens)
        source = TeacherCache(Path(c.path))  # the next, smaller k: the first k of these (sorted, the same values)
    if "dense" in forms:
        c = forms["dense"][1]
        open_teacher_cache(c, family.build_teacher(c, loaded), loaded.task, loaded.train)
        stats["dense"] = cache_stats(Path(c.teacher.cache.path), tokens)
    return stats


def hidden_kl(reference: Path, other: Path, every: int = 10) -> dict[str, float]:
    """How far the teacher of a hidden-state store in another dtype is from the float32 one: KL(p_float32 || p_other)
    of the next-token distributions (nats per token; mean and max over the tokens of every ``every``-th block)."""
    from distill.cache import TeacherCache

    a, b = TeacherCache(reference), TeacherCache(other)
    idx = torch.arange(0, a.store.num_examples, every)
    views = torch.zeros(len(idx), dtype=torch.long)
    kls = []
    for lo in range(0, len(idx), 16):
        sel, v = idx[lo:lo + 16], views[lo:lo + 16]
        # the dense logits a training run is served (head, logit scale, soft-cap), from each store's hidden states
        logp = [c._hidden_output(c.store.get(sel, v, ["hidden"])["hidden"].float(), {}, None).logits.log_softmax(-1)
                for c in (a, b)]
        kls.append((logp[0].exp() * (logp[0] - logp[1])).sum(-1).flatten())
    kl = torch.cat(kls)
    return {"mean": float(kl.mean()), "max": float(kl.max())}


# -- the TAID t curve --------------------------------------------------------------------------------------------
def watch_taid(exp: Experiment) -> list[list[float]] | None:
    """Record TAID's t after every training step (a forward hook on the method: ``[progress, t_lin, t]``); None
    when the run has no TAID."""
    curve: list[list[float]] = []
    found = False
    for m in exp.methods.methods.values():
        if type(m).__name__ == "TAID":
            found = True

            def hook(module: Any, args: Any, _out: Any) -> None:
                if module.training:
                    p = float(args[0].progress)
                    floor = min(module.t_end, module.t_start + (module.t_end - module.t_start) * p)
                    curve.append([round(p, 6), round(floor, 6), round(float(module.t), 6)])

            m.register_forward_hook(hook)
    return curve if found else None


def t_summary(curve: list[list[float]], points: int = 64) -> dict[str, Any]:
    """First, lowest and last t, the largest lead of t over its linear floor, the steps above the floor, and the
    curve thinned to about ``points`` entries (``[progress, floor, t]``; the last step always kept)."""
    ts = [c[2] for c in curve]
    lead = [c[2] - c[1] for c in curve]
    every = max(1, len(curve) // points)
    thin = curve[::every] + ([curve[-1]] if (len(curve) - 1) % every else [])
    return {"t_first": ts[0], "t_min": min(ts), "t_last": ts[-1], "t_max_above_floor": round(max(lead), 6),
            "t_steps_above_floor": sum(d > 1e-6 for d in lead), "t_steps": len(curve), "t_curve": thin}


# -- the work queue ----------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(folder: Path, arm: str, seed: int) -> Path | None:
    """Claim (arm, seed) for this process: a file created exclusively; a claim whose process is gone is taken
    over. None when another live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{arm}-s{seed}"
    for _ in range(2):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(f.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return None
            f.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return f
    return None


def done_runs(path: Path, res: dict[str, Any]) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    on_disk = json.loads(path.read_text())
    if any(on_disk.get("args", {}).get(k) != res["args"].get(k) for k in MATCH):
        return set()
    return {(r["arm"], int(r["seed"])) for r in on_disk.get("runs", [])}


# -- the table ---------------------------------------------------------------------------------------------------
def store_cost(runs: list[dict[str, Any]], arm: str = "fkl", dense: str = "fkl_dense") -> dict[str, Any] | None:
    """The perplexity cost of ``arm``'s store against ``dense``: the paired difference in % of the dense arm's
    perplexity, per seed, with its mean and 95% interval."""
    a = {int(r["seed"]): float(r["val_perplexity"]) for r in runs if r["arm"] == arm}
    b = {int(r["seed"]): float(r["val_perplexity"]) for r in runs if r["arm"] == dense}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    pct = {s: 100.0 * (a[s] - b[s]) / b[s] for s in seeds}
    mean, ci, n = paired_difference(pct, {s: 0.0 for s in seeds})
    return {"arm": arm, "dense": dense, "percent_per_seed": pct, "mean_percent": mean,
            "ci95_percent": list(ci) if ci else None, "seeds": n}


def render(res: dict[str, Any], path: Path, command: str) -> None:
    import verdicts

    runs = res.get("runs", [])
    verdict = verdicts.tinyshakespeare_verdicts(res) if runs else {}
    sums = summarise(runs, "val_perplexity", baseline="ce", order=ARMS, scale=1.0)
    agree = {s.arm: s for s in summarise(runs, "teacher_agreement", order=ARMS, scale=1.0)}
    per_arm: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        per_arm.setdefault(r["arm"], []).append(r)
    t = res.get("teacher", {})
    lines = [f"# tinyshakespeare at ~1M tokens per arm: SmolLM2-135M-Instruct -> small Llama ({NAME})", "",
             f"Command: `{command}`", "",
             "Recipes: configs/tinyshakespeare_1m/ (settings in _base.yaml). Teacher (dequantised Q4_1) on the "
             f"same validation blocks: perplexity {t.get('val_perplexity', float('nan')):.2f}.", "",
             "| arm | teacher signal | train tokens | val perplexity, mean ± sd | vs ce, paired (95% CI) | top-1 "
             "agreement | tokens/s | CPU s / step | per seed | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for s in sums:
        rs = per_arm[s.arm]
        diff = "" if s.diff is None else f"{s.diff:+.2f}" + (f" [{s.ci[0]:+.2f}, {s.ci[1]:+.2f}]" if s.ci else "")
        a = agree.get(s.arm)
        tps = statistics.mean(float(r.get("tokens_per_second") or 0) for r in rs)
        cpu = [float(r["cpu_seconds_per_step"]) for r in rs if r.get("cpu_seconds_per_step") is not None]
        mean = f"{s.mean:.2f} ± {s.sd:.2f}" if len(s.values) > 1 else f"{s.mean:.2f}"
        seeds = ", ".join(f"{v:.2f}" for v in s.values.values())
        v = str(verdict.get(s.arm, "")).replace("|", "/")
        lines.append(f"| {s.arm} | {rs[0].get('teacher', '')} | {rs[0].get('train_tokens', 0):,} | {mean} | {diff} "
                     f"| {'' if a is None else f'{a.mean:.4f}'} | {tps:.0f} | "
                     f"{statistics.mean(cpu) if cpu else float('nan'):.2f} | {seeds} | {v} |")
    costs = [(arm, what, store_cost(runs, arm)) for arm, what in STORE_ARMS.items()]
    if any(c for _, _, c in costs):
        lines += ["", "The sparse stores against dense (forward KL, validation perplexity, paired by seed, % of "
                  "fkl_dense's; the spec's criterion: top-64 `symmetric_uniform` at most +2%):", "",
                  "| arm | store | seeds | cost vs dense, % (95% CI) | per seed, % |", "|---|---|---:|---:|---|"]
        for arm, what, cost in costs:
            if cost:
                ci = cost["ci95_percent"]
                per = ", ".join(f"{v:+.2f}" for v in cost["percent_per_seed"].values())
                lines.append(f"| {arm} | {what} | {cost['seeds']} | {cost['mean_percent']:+.2f}"
                             + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "") + f" | {per} |")
    taid = [a for a in ARMS if any("t_last" in r for r in per_arm.get(a, []))]
    if taid:
        lines += ["", "TAID's interpolation t (mean over seeds; floor: t_start + (t_end - t_start) x progress):", "",
                  "| arm | seeds | t first | t min | t last | largest lead over the floor | steps above the floor |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for a in taid:
            rs = [r for r in per_arm[a] if "t_last" in r]
            m = {k: statistics.mean(float(r[k]) for r in rs) for k in ("t_first", "t_min", "t_last",
                                                                        "t_max_above_floor", "t_steps_above_floor")}
            steps = statistics.mean(float(r["t_steps"]) for r in rs)
            lines.append(f"| {a} | {len(rs)} | {m['t_first']:.4f} | {m['t_min']:.4f} | {m['t_last']:.4f} | "
                         f"{m['t_max_above_floor']:+.5f} | {m['t_steps_above_floor']:.0f} of {steps:.0f} |")
    if res.get("stores"):
        lines += ["", "Teacher stores (training blocks):", "",
                  "| store | size (MB) | of which stored once (MB) | bytes/token | build (s) | teacher mean tail mass "
                  "outside top k |", "|---|---:|---:|---:|---:|---:|"]
        order = sorted(res["stores"], key=lambda f: (not f.startswith("hidden"), f != "hidden",
                                                     -int(f[1:]) if f[1:].isdigit() else 0))
        for s in (res["stores"][f] for f in order):  # the dense forms (float32 first), then top-k, largest k first
            tail = "-" if s.get("mean_tail_mass") is None else f"{s['mean_tail_mass']:.4f}"
            build = "-" if s.get("build_seconds") is None else f"{s['build_seconds']:.0f}"
            lines.append(f"| {s['name']} | {s['megabytes']:.1f} | {s.get('once_megabytes', 0):.1f} | "
                         f"{s['bytes_per_token']:.0f} | {build} | {tail} |")
    lines.append("")
    path.write_text("\n".join(lines))


# -- main --------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run in a temp folder")
    ap.add_argument("--measure", action="store_true", help="seconds per step of each arm kind (6 steps each)")
    ap.add_argument("--stores", action="store_true",
                    help="build the teacher stores and evaluate the teacher, then exit")
    ap.add_argument("--render", action="store_true", help="regenerate the table from the JSON, then exit")
    ap.add_argument("--configs", type=Path, default=CONFIGS)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work" / NAME),
                    help="runs, claims and teacher stores (the hidden-state store is ~0.8 GB)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a --set assignment applied to every arm")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    arms_wanted = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms_wanted if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm {unknown[0]!r}; choose from {ARMS}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sets, name = list(args.sets), NAME
    if args.quick:
        arms_wanted, seeds = QUICK_ARMS, [0, 1]
        args.out = args.work = tempfile.mkdtemp(prefix=f"{NAME}_")
        sets, name = QUICK + sets, f"{NAME}_quick"
    elif args.measure:
        arms_wanted, seeds = MEASURE_ARMS, [0]
        args.work = str(Path(args.work) / "measure")  # the table goes to --out: results/tinyshakespeare_1m_measure.md
        sets, name = MEASURE + sets, f"{NAME}_measure"
    out_dir, work = Path(args.out), Path(args.work).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    command = "python benchmarks/tinyshakespeare_1m.py " + " ".join(argv if argv is not None else sys.argv[1:])
    configs = str(args.configs.resolve().relative_to(REPO)) if args.configs.resolve().is_relative_to(REPO) \
        else args.configs.name
    res: dict[str, Any] = {"args": {"configs": configs, "sets": sets}, "runs": [], "stores": {}}
    if args.measure and not args.render:  # a measurement times fresh steps: no earlier record or checkpoint reused
        shutil.rmtree(work / "runs", ignore_errors=True)
        json_path.unlink(missing_ok=True)
    if json_path.exists():
        on_disk = json.loads(json_path.read_text())
        if all(on_disk.get("args", {}).get(k) == res["args"].get(k) for k in MATCH):
            res.update({k: v for k, v in on_disk.items() if k != "args"})
    if args.render:
        render(res, md_path, res.get("command", command))
        log(f"wrote {md_path}")
        return
    res["command"] = command
    arms = {a: f for a, f in discover_arms(args.configs, ARMS).items() if a in arms_wanted}

    def overrides(arm: str, seed: int) -> list[str]:
        return arm_overrides(arms[arm], work / "runs" / f"{arm}-s{seed}", work, seed, sets, quick=args.quick)

    if args.stores or args.quick or args.measure or not all((work / f"teacher_{f}" / "manifest.json").exists()
                                                            for f in _forms(arms)):
        stores = build_stores(arms, overrides)
        res["stores"].update(stores)
        log(f"stores: {json.dumps(stores, indent=1)}")
    # the teacher on the held-out blocks, once (kept in the work folder; --stores computes it before the workers)
    res["teacher"], top1 = teacher_eval(arms.get("ce", next(iter(arms.values()))), [*sets, "seed=0"], work)
    if args.stores:
        _save(json_path, res)
        return
    curves: dict[str, Any] = {}

    def before_fit(arm: str, exp: Experiment) -> dict[str, Any]:
        curves["t"] = watch_taid(exp)
        curves["cpu"] = time.process_time()
        found = checkpoint_folders(exp.trainer.run_dir / "checkpoints")  # a resumed run: CPU counts its steps only
        curves["from"] = int(found[-1].name.removeprefix("step-")) if found else 0  # names only: fit loads it
        return {}

    def after_fit(arm: str, exp: Experiment) -> dict[str, Any]:
        cpu = time.process_time() - curves["cpu"]  # this process's CPU time in fit: what the shared machine's other
        record = evaluate_run(exp, top1)           # jobs disturb far less than the wall clock
        record["train_cpu_seconds"] = round(cpu, 1)
        record["cpu_seconds_per_step"] = round(cpu / max(record["steps"] - curves["from"], 1), 3)
        if curves["from"]:
            record["resumed_from_step"] = curves["from"]
        record.pop("taid_t_final", None)
        if curves.get("t"):
            record.update(t_summary(curves["t"]))
        log(f"arm {arm}: { {k: v for k, v in record.items() if k != 't_curve'} }")
        return record

    sweep = Sweep(arms, seeds, json_path, overrides, metric="val_perplexity", match_args=MATCH,
                  before_fit=before_fit, after_fit=after_fit, repo=REPO, log=log, scale=1.0, unit="")
    claims = work / "claims"
    for seed in seeds:  # seed-major: a first seed of every arm comes first
        for arm in arms:
            if (arm, seed) in done_runs(json_path, res):
                continue
            held = claim(claims, arm, seed)
            if held is None:
                log(f"{arm} seed {seed}: taken by another process")
                continue
            try:
                if (arm, seed) in done_runs(json_path, res):  # finished by another process since we looked
                    continue
                t0 = time.perf_counter()
                record = sweep.run_one(arm, seed)
                log(f"{arm} seed {seed}: perplexity {record['val_perplexity']:.2f} ({time.perf_counter() - t0:.0f} s)")
                save_run(json_path, res, record, MATCH, merge_keys=("stores",))
                render(res, md_path, command)
            finally:
                held.unlink(missing_ok=True)
    if json_path.exists():
        res["runs"] = json.loads(json_path.read_text()).get("runs", [])
    _save(json_path, res)
    render(res, md_path, command)
    if args.measure:
        log("seconds per step (wall / CPU): " + ", ".join(
            f"{r['arm']} {r['train_seconds'] / r['steps']:.2f} / {r['cpu_seconds_per_step']:.2f}" for r in res["runs"]))
    log(f"wrote {json_path} and {md_path}")


def _forms(arms: dict[str, Path]) -> set[str]:
    """The stored forms of the teacher the arms read."""
    forms = set()
    for path in arms.values():
        raw, _ = load_recipe(path, [])
        cache = (raw.get("teacher") or {}).get("cache")
        if cache:
            forms.add(store_form(cache))
    return forms


def _save(path: Path, res: dict[str, Any]) -> None:
    """The results with the runs and store statistics on disk (other processes may have added some since this one
    read them)."""
    if path.exists():
        on_disk = json.loads(path.read_text())
        if all(on_disk.get("args", {}).get(k) == res["args"].get(k) for k in MATCH):
            mine = {(r["arm"], r["seed"]): r for r in res.get("runs", [])}
            mine.update({(r["arm"], r["seed"]): r for r in on_disk.get("runs", [])})
            res["runs"] = list(mine.values())
            res["stores"] = {**(on_disk.get("stores") or {}), **(res.get("stores") or {})}
    write_json(path, res, indent=1)


if __name__ == "__main__":
    main()
