"""Sweeps of recipe files: arms (YAML experiment files) x seeds -> runs -> resumable JSON -> table.

An arm is a complete ``distill train`` experiment file (``configs/<pair>/<arm>.yaml``; the arm's name is the file
stem, files whose name starts with ``_`` are shared bases, not arms). A sweep runs every (arm, seed) through
:func:`distill.config.load_config` with the sweep's own ``--set`` assignments (seed, output directory, ...) and
:func:`distill.experiment.build_experiment`, and writes one record per run to a JSON file as each finishes (under
a lock, merged with what other processes wrote, replaced atomically), so an interrupted sweep resumes and a sweep
can be split over processes that share one results file. :func:`summarise` and :func:`markdown_table` turn the
records into mean ± sd per arm and the paired difference against a baseline arm, with a 95% t-interval over the
seeds both ran.

Nothing here is specific to images: a benchmark of any task whose experiments ``build_experiment`` builds (and
whose ``fit`` returns ``{"final": {metric: ...}, "history": [...]}``) can use it.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portable import write_json

from distill.config import load_raw, parse_config, set_override
from distill.experiment import Experiment, build_experiment

#: (arm, seed) -> the sweep's own ``KEY=VALUE`` assignments for that run (``set_override`` / ``--set`` syntax)
Overrides = Callable[[str, int], list[str]]
#: facts measured on a built experiment, recorded with the run (``before_fit``: untrained; ``after_fit``: trained)
Hook = Callable[[str, Experiment], dict[str, Any]]


def discover_arms(folder: str | Path, order: Sequence[str] = (), stages: Sequence[str] = ()) -> dict[str, Path]:
    """``{arm: file}`` of every ``*.yaml`` in ``folder`` (not ``_*.yaml`` bases, nor the stage recipes named in
    ``stages``, e.g. ``teacher``): the arms named in ``order`` first, in that order, then any others by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such recipe folder")
    files = {p.stem: p for p in sorted(folder.glob("*.yaml")) if not p.name.startswith("_") and p.stem not in stages}
    ranked = [a for a in order if a in files] + sorted(a for a in files if a not in order)
    return {a: files[a] for a in ranked}


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> tuple[dict[str, Any], Any]:
    """(the merged raw mapping with ``overrides`` applied, its validated config); exactly what
    ``distill train PATH --set ...`` would run."""
    path = Path(path)
    raw = load_raw(path)
    for assignment in overrides:
        set_override(raw, assignment)
    return raw, parse_config(copy.deepcopy(raw), base_dir=path.parent)


@dataclass
class Stage:
    """A finished stage recipe: a run whose output another arm reads (a fine-tuned teacher); ``summary`` is its
    ``summary.json``, ``weights`` its ``student.safetensors``."""

    path: Path
    run_dir: Path
    summary: dict[str, Any]
    trained: bool  # False: an earlier run's output was reused

    @property
    def weights(self) -> Path:
        return self.run_dir / "student.safetensors"


def run_stage(path: str | Path, overrides: Iterable[str] = (), log: Callable[[str], None] = print) -> Stage:
    """Run a stage recipe through :func:`build_experiment` once: when its output folder already holds
    ``student.safetensors`` and ``summary.json`` (a finished run) nothing is trained and that run is reused;
    otherwise it trains (resuming from its last checkpoint)."""
    path = Path(path)
    _, cfg = load_recipe(path, overrides)
    run_dir = Path(cfg.output_dir)
    done = run_dir / "summary.json"
    if done.exists() and (run_dir / "student.safetensors").exists():
        return Stage(path, run_dir, json.loads(done.read_text()), trained=False)
    t0 = time.perf_counter()
    summary = build_experiment(cfg).fit(resume=True)
    log(f"stage {path.stem}: {summary.get('final')} ({time.perf_counter() - t0:.0f}s) -> {run_dir}")
    return Stage(path, run_dir, summary, trained=True)


# -- resumable results ---------------------------------------------------------------------------------------
def compatible(on_disk: dict[str, Any], results: dict[str, Any], match_args: Sequence[str]) -> bool:
    """Whether the runs in ``on_disk`` were made with the same ``args[k]`` as ``results`` for each ``k``."""
    old, new = on_disk.get("args", {}), results.get("args", {})
    return all(old.get(k) == new.get(k) for k in match_args)


def previous_runs(results_path: Path, results: dict[str, Any], match_args: Sequence[str]) -> list[dict[str, Any]]:
    """The runs already in ``results_path`` that a sweep with ``results["args"]`` can resume from."""
    if not results_path.exists():
        return []
    old = json.loads(results_path.read_text())
    return list(old.get("runs", [])) if compatible(old, results, match_args) else []


def save_run(results_path: Path, results: dict[str, Any], run: dict[str, Any],
             match_args: Sequence[str] = ("epochs",), merge_keys: Sequence[str] = ()) -> None:
    """Add ``run`` to the runs in the results file as it is now (other processes may have written there since we
    read it), under an exclusive lock, replaced atomically so that a crash mid-write never leaves a broken file.
    Runs on disk made with other ``args`` (``match_args``) are dropped; one record per (arm, seed). ``merge_keys``:
    top-level dicts that other processes may also extend (a benchmark's store statistics): the entries on disk are
    kept, this process's replace those of the same key."""
    with open(results_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.loads(results_path.read_text()) if results_path.exists() else {}
        keep = compatible(on_disk, results, match_args)
        merged = {(r["arm"], r["seed"]): r for r in on_disk.get("runs", []) if keep}
        merged[(run["arm"], run["seed"])] = run
        results["runs"] = list(merged.values())
        for key in merge_keys if keep else ():
            results[key] = {**(on_disk.get(key) or {}), **(results.get(key) or {})}
        write_json(results_path, results)


# -- running -------------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """Arms x seeds, each run built from its recipe file plus ``overrides(arm, seed)``."""

    arms: dict[str, Path]
    seeds: list[int]
    results_path: Path
    overrides: Overrides
    metric: str = "accuracy"
    match_args: tuple[str, ...] = ("epochs",)
    before_fit: Hook | None = None
    after_fit: Hook | None = None
    repo: Path | None = None  # recipe paths are recorded relative to this folder
    scale: float = 100.0  # the metric as logged: value * scale, then unit
    unit: str = "%"
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True))

    def run_one(self, arm: str, seed: int) -> dict[str, Any]:
        path = self.arms[arm]
        raw, cfg = load_recipe(path, self.overrides(arm, seed))
        exp = build_experiment(cfg)
        extra = self.before_fit(arm, exp) if self.before_fit else {}
        summary = exp.fit(resume=True)
        extra.update(self.after_fit(arm, exp) if self.after_fit else {})
        times = [h["epoch_time"] for h in summary.get("history", []) if "epoch_time" in h]
        recipe = path.resolve().relative_to(self.repo) if self.repo else path
        record = {"arm": arm, "seed": seed, self.metric: summary["final"].get(self.metric),
                  "epoch_time_s": statistics.median(times) if times else None, "run_dir": str(exp.trainer.run_dir),
                  "recipe": str(recipe), "methods": raw["methods"], **extra}  # a hook may measure the metric
        if record[self.metric] is None:
            raise KeyError(f"{arm} seed {seed}: no {self.metric!r} in the run's final evaluation or the hooks")
        return record

    def run(self, results: dict[str, Any], only: Sequence[str] | None = None) -> dict[str, Any]:
        """Run every (arm, seed) not yet in ``results["runs"]`` (seed-major, so a first seed of every arm comes
        first), saving each record as it finishes; ``only`` restricts the runs to some arms."""
        done = {(r["arm"], r["seed"]) for r in results["runs"]}
        for seed in self.seeds:
            for arm in self.arms:
                if (arm, seed) in done or (only and arm not in only):
                    continue
                t0 = time.perf_counter()
                r = self.run_one(arm, seed)
                self.log(f"{arm:8s} seed {seed}: {self.scale * r[self.metric]:.2f}{self.unit}  "
                         f"({time.perf_counter() - t0:.0f}s)")
                save_run(self.results_path, results, r, self.match_args)
        return results


# -- tables --------------------------------------------------------------------------------------------------
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table to 30, then a Cornish-Fisher
    expansion, within 1e-3)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass
class ArmSummary:
    arm: str
    values: dict[int, float]  # seed -> metric (scaled)
    mean: float
    sd: float  # 0 with one seed
    diff: float | None = None  # paired mean difference to the baseline over the common seeds
    ci: tuple[float, float] | None = None  # its 95% t-interval (two or more common seeds)
    common: int = 0  # seeds both ran


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float | None, tuple[float, float] | None,
                                                                           int]:
    """(mean of a - b over the seeds both have, its 95% t-interval or None under two seeds, number of seeds)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None, None, 0
    d = [a[s] - b[s] for s in seeds]
    mean = statistics.mean(d)
    if len(d) < 2:
        return mean, None, 1
    half = t_quantile_975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return mean, (mean - half, mean + half), len(d)


def summarise(runs: Iterable[dict[str, Any]], metric: str = "accuracy", baseline: str | None = None,
              order: Sequence[str] = (), scale: float = 100.0) -> list[ArmSummary]:
    """Mean ± sd of ``metric`` (times ``scale``) per arm, in ``order`` then by name, and the paired difference
    of each arm against ``baseline`` (None for the baseline itself and when it has not run)."""
    by_arm: dict[str, dict[int, float]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[int(r["seed"])] = scale * float(r[metric])
    rank = {a: i for i, a in enumerate(order)}
    out = []
    for arm in sorted(by_arm, key=lambda a: (rank.get(a, len(rank)), a)):
        vals = dict(sorted(by_arm[arm].items()))
        xs = list(vals.values())
        s = ArmSummary(arm, vals, statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
        if baseline is not None and arm != baseline and baseline in by_arm:
            s.diff, s.ci, s.common = paired_difference(vals, by_arm[baseline])
        out.append(s)
    return out


def format_mean(s: ArmSummary) -> str:
    return f"{s.mean:.2f} ± {s.sd:.2f}" if len(s.values) > 1 else f"{s.mean:.2f}"


def format_diff(s: ArmSummary) -> str:
    """``+1.23`` (one common seed) or ``+1.23 [+0.40, +2.06]`` (95% t-interval); empty without a baseline."""
    if s.diff is None:
        return ""
    return f"{s.diff:+.2f}" + (f" [{s.ci[0]:+.2f}, {s.ci[1]:+.2f}]" if s.ci else "")


def markdown_table(summaries: Sequence[ArmSummary], metric: str = "accuracy (%)",
                   baseline: str | None = None, verdicts: Mapping[str, object] | None = None) -> list[str]:
    """A generic Markdown table: arm | mean ± sd | paired difference to ``baseline`` (95% CI) | per seed, and a
    verdict column when ``verdicts`` (arm -> verdict, e.g. :func:`verdicts.judge_all`'s) is given."""
    diff = f"vs {baseline}, paired (95% CI)" if baseline else "difference"
    extra = " verdict |" if verdicts is not None else ""
    lines = [f"| arm | {metric}, mean ± sd | {diff} | per seed |{extra}",
             "|---|---|---|---|" + ("---|" if extra else "")]
    for s in summaries:
        per_seed = ", ".join(f"{v:.2f}" for v in s.values.values())
        cell = f" {str(verdicts.get(s.arm, '')).replace('|', '/')} |" if verdicts is not None else ""
        lines.append(f"| {s.arm} | {format_mean(s)} | {format_diff(s)} | {per_seed} |{cell}")
    return lines


def parse_with_recipe(parser: argparse.ArgumentParser, recipe: Path,
                      keys: Sequence[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``parser``'s command line with the benchmark's settings declared once, in the recipe: ``--config``
    (default ``recipe``) names a YAML file whose ``settings:`` must give exactly ``keys``; each becomes a flag
    (``--per-domain``) of the value's type whose default is the recipe's value. Returns (args, the settings as
    run). An unknown or missing key is refused by name."""
    import yaml

    parser.add_argument("--config", type=Path, default=recipe,
                        help="the recipe whose settings are this run's defaults (flags override them)")
    known, _ = parser.parse_known_args()
    settings = (yaml.safe_load(known.config.read_text()) or {}).get("settings") or {}
    unknown, absent = sorted(set(settings) - set(keys)), [k for k in keys if k not in settings]
    if unknown:
        raise SystemExit(f"{known.config}: settings.{unknown[0]}: not a setting of this benchmark "
                         f"(settings: {', '.join(keys)})")
    if absent:
        raise SystemExit(f"{known.config}: settings.{absent[0]}: missing (this benchmark reads {', '.join(keys)})")
    for key in keys:
        parser.add_argument("--" + key.replace("_", "-"), type=type(settings[key]), default=settings[key])
    args = parser.parse_args()
    return args, {k: getattr(args, k) for k in keys}


def results_for(path: Path, settings: dict[str, Any], empty: dict[str, Any]) -> dict[str, Any]:
    """The results stored at ``path`` when they were made with ``settings`` (a run resumes them), else ``empty``
    with the settings; results made with other settings are never overwritten: refused, naming what differs."""
    if not path.exists():
        return {"settings": settings, **empty}
    results = json.loads(path.read_text())
    old = results.get("settings") or {}
    if old != settings:
        diff = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                         if old.get(k) != settings.get(k))
        raise SystemExit(f"{path} holds results made with other settings ({diff}); give --out for a new table")
    return results


# -- the parts every recipe-folder image benchmark shares (acam_kd, dmae, ortrack, paired_views, vit_ofa, ...) ----
def arm_parser(doc: str | None, name: str, order: Sequence[str]) -> argparse.ArgumentParser:
    """The command line of a benchmark over a recipe folder's arms: ``--shared`` (../shared), ``--work`` (runs and
    caches), ``--out`` (the result tables), ``--arms``, ``--seeds``, ``--name`` (the result file's stem) and
    ``--report-only``; a script adds its own options."""
    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=repo.parent / "shared")
    p.add_argument("--work", type=Path, default=repo / "benchmarks" / "work")
    p.add_argument("--out", type=Path, default=repo / "benchmarks" / "results")
    p.add_argument("--arms", nargs="+", default=list(order))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--name", default=name)
    p.add_argument("--report-only", action="store_true")
    return p


def arm_start(parser: argparse.ArgumentParser, folder: Path, order: Sequence[str],
              write_table: Callable[[Path, str, dict[str, Any]], Path], stages: Sequence[str] = ()
              ) -> tuple[argparse.Namespace, dict[str, Path], Path] | None:
    """How a benchmark over a recipe folder's arms starts, once :func:`arm_parser` has its own options: parse the
    command line, find the arms of ``folder`` (:func:`discover_arms` with ``order``; ``stages`` are no arms), make
    ``--out`` and name the results file ``<out>/<name>.json``. Returns (args, {arm: recipe file}, the results
    path), or None after ``--report-only`` has printed the stored results' table (``write_table(out, name,
    results)`` writes it and returns its path)."""
    args = parser.parse_args()
    files = discover_arms(folder, order, stages)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / f"{args.name}.json"
    if args.report_only:
        print(write_table(args.out, args.name, json.loads(results_path.read_text())).read_text())
        return None
    return args, files, results_path


def cifar_overrides(args: argparse.Namespace, extra: Iterable[str] = ()) -> list[str] | None:
    """The overrides that point every arm at ``--shared``'s CIFAR-10 JPEG archive and ``--work``'s decoded cache
    (then ``extra``); None, with the reason printed, when the archive is missing."""
    import sys

    data = args.shared / "data" / "cifar10-jpeg.tar.gz"
    if not data.exists():
        print(f"data not found: {data} (pass --shared)", file=sys.stderr)
        return None
    return [f"data.cache_dir={json.dumps(str(args.work / 'cache'))}", f"data.train={json.dumps(str(data))}",
            f"data.eval={json.dumps(str(data))}", *extra]


def still_to_run(rows: Iterable[Mapping[str, Any]], arms: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """The table's closing line naming the (arm, seed) runs not finished yet (none when all are)."""
    done = {(r["arm"], r["seed"]) for r in rows}
    todo = [f"{arm} seed {seed}" for seed in seeds for arm in arms if (arm, seed) not in done]
    return ["", f"Still to run: {', '.join(todo)} (the command resumes where it stopped)."] if todo else []
