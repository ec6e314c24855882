"""The CIFAR-10 catalogue's missing runs as one batch for a lent GPU machine (issue 17's seeds, probes and controls).

A session that is lent a GPU has about 15 minutes of it, so the batch is prepared here and sent once:

    bash scripts/device_prepare.sh            # here, once: wheels for the device's Python, CIFAR files, in .device/
    python benchmarks/device_batch.py --plan  # here: the jobs still missing, in the order they run
    # there (the device tool's run, carry [".device"]), one command:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .device/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 && \\
        python3 benchmarks/device_batch.py --shared .device/shared --out $OUT --launch-for 420 --stop-at 540
    # here, with the files that came back:
    python benchmarks/device_batch.py --merge /work/.device/<files_at>

Every job is one ``benchmarks/cifar10_kd.py --only ARM --seeds SEED`` process (its own run folder, results merged
under the sweep's file lock); for the arms whose criterion reads a probe (feature and relational methods, KD++'s
embedding norm, and the CE baseline they are compared with) it probes the finished run before recording it
(``--probe-name catalogue``), so a stopped job leaves neither and is planned again. ``--workers`` processes run
side by side (one thread each); new jobs start until ``--launch-for`` seconds have passed, and every job still
running at ``--stop-at`` is stopped with its process group. The first job runs alone until the decoded images are
cached, so the others do not all decode the archive at once. The result files land in ``--out``; ``--merge`` adds
their runs and probe records to the local files, keeping a local record where both have one (a table the batch
started is taken whole, if it ran on its recipes' schedule), and prints the commands that re-render the tables.
A smoke test (``--epochs``, ``--per-class``) must write to another ``--results`` folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

from distill.config import load_raw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TEACHER = "src/distill/assets/resnet56_cifar10_jpeg.safetensors"
#: the batch's groups in the order they run: group -> (result name, recipe folder, cifar10_kd.py's extra arguments)
GROUPS = {
    "resnet20": ("cifar10_catalogue", "configs/cifar10", ()),
    "tgeo": ("cifar10_tgeo", "configs/cifar10_tgeo", ("--configs", "configs/cifar10_tgeo")),
    "mixt": ("cifar10_mixt", "configs/cifar10_mixt", ("--configs", "configs/cifar10_mixt", "--teacher-mixup")),
    "mobilenetv2": ("cifar10_catalogue_mobilenetv2", "configs/cifar10_mobilenetv2", ("--student", "mobilenetv2")),
    "mealv2": ("cifar10_mealv2", "configs/cifar10_mealv2", ("--configs", "configs/cifar10_mealv2")),  # 50k images
}
TABLES = {group: name for group, (name, _, _) in GROUPS.items()}
#: arms whose verdict needs a probe of their runs (and of the CE baseline's)
PROBED = ("scratch", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "fsp", "nst", "ft", "crd", "reviewkd",
          "nd")
FEATURE_ARMS = PROBED[1:-1]
LOGIT_ARMS = ("kd", "dkd", "dist", "lskd", "pld", "nd", "mixup", "mixup_t1", "mixkd", "dho")
CONTROL_ARMS = ("dho_single_head",)
#: the protocol tables of one row each: every arm, these seeds
PROTOCOL_SEEDS = {"tgeo": (0, 1, 2), "mixt": (0, 1, 2), "mealv2": (0, 1)}


def plan(results: Path = RESULTS) -> list[tuple[str, str, int]]:
    """(group, arm, seed) still missing, in the order they should run: per catalogue pair, the shared baselines, the
    logit arms' seeds 1-2, the feature arms' seeds 1-2 (probed), the control arms' seeds 0-2; TGeo-KD's and MEAL
    V2's protocol tables (every arm, ``PROTOCOL_SEEDS``) between the two pairs."""
    jobs = []
    for group, (name, configs, _) in GROUPS.items():
        path = results / f"{name}.json"
        done = {(r["arm"], r["seed"]) for r in json.loads(path.read_text())["runs"]} if path.exists() else set()
        have = {p.stem for p in (REPO / configs).glob("*.yaml") if not p.stem.startswith("_")}
        if group in PROTOCOL_SEEDS:
            jobs += [(group, a, s) for s in PROTOCOL_SEEDS[group] for a in sorted(have) if (a, s) not in done]
            continue
        wanted = [(a, s) for a in ("scratch",) for s in (1, 2)]
        wanted += [(a, s) for a in LOGIT_ARMS for s in (1, 2)]
        wanted += [(a, s) for a in FEATURE_ARMS for s in (1, 2)]
        wanted += [(a, s) for a in CONTROL_ARMS for s in (0, 1, 2)]
        jobs += [(group, a, s) for a, s in wanted if a in have and (a, s) not in done]
    return jobs


def job_command(args: argparse.Namespace, group: str, arm: str, seed: int) -> str:
    """The shell command of one job: the run, then its probe where the verdict reads one."""
    python, work, out = sys.executable, args.work, args.results
    name, _, extra = GROUPS[group]
    schedule = (f" --epochs {args.epochs}" if args.epochs else "") + (
        f" --per-class {args.per_class}" if args.per_class else "")
    probe = " --probe-name catalogue" if arm in PROBED and group not in PROTOCOL_SEEDS else ""
    return (f"{python} benchmarks/cifar10_kd.py --shared {args.shared} --work {work} --out {out} --arms all "
            f"--only {arm} --seeds {seed}{schedule}{'' if '--teacher-mixup' in extra else ' --teacher ' + TEACHER} "
            f"--name {name}{probe} "
            f"{' '.join(extra)}").rstrip()


def run_batch(args: argparse.Namespace) -> int:
    jobs = [j for j in plan(args.results) if not args.arms or j[1] in args.arms][:args.max_jobs]
    print(f"{len(jobs)} jobs, first {', '.join(f'{s}/{a}/{n}' for s, a, n in jobs[:6])}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.time()
    running: dict[tuple[str, str, int], tuple[subprocess.Popen[bytes], float]] = {}
    finished: list[dict[str, Any]] = []
    cache = args.work / "cache"
    while jobs or running:
        now = time.time() - start
        for job, (proc, began) in list(running.items()):
            if proc.poll() is not None or now > args.stop_at:
                if proc.poll() is None:  # the run and the probe it started: the whole process group
                    os.killpg(proc.pid, signal.SIGKILL)
                finished.append({"job": "/".join(map(str, job)), "rc": proc.wait(), "seconds": round(now - began)})
                print(f"[{now:5.0f}s] {finished[-1]}", flush=True)
                del running[job]
        warm = any(cache.glob("*.npz")) if cache.exists() else False
        slots = args.workers if (warm or not running) else 0
        while jobs and len(running) < slots and now < args.launch_for:
            job = jobs.pop(0)
            cmd = job_command(args, *job)
            log = open(logs / f"{'-'.join(map(str, job))}.log", "wb")  # noqa: SIM115 (closed with the process)
            running[job] = (subprocess.Popen(shlex.split(cmd), cwd=REPO, env=env, stdout=log, stderr=log,
                                             start_new_session=True), now)
            if not warm:
                break
        if now >= args.launch_for and not running:
            break
        time.sleep(2)
    left = [f"{s}/{a}/{n}" for s, a, n in jobs]
    summary = {"finished": finished, "not_started": left, "wall_s": round(time.time() - start)}
    write_json(args.out / "device_batch.json", summary)
    for name in [*TABLES.values(), "probes_catalogue"]:
        path = args.results / f"{name}.json"
        if path.exists():
            (args.out / path.name).write_bytes(path.read_bytes())
    print(json.dumps({k: v for k, v in summary.items() if k != "finished"}), flush=True)
    return 0


def merge(folder: Path, results: Path = RESULTS) -> list[str]:
    """Add the runs (by arm and seed) and probe records (by run folder) of the files in ``folder`` to the local
    result files; a record present in both keeps the local one. Returns what was added."""
    added = []
    for name in TABLES.values():
        there, here = folder / f"{name}.json", results / f"{name}.json"
        if not there.exists():
            continue
        theirs = json.loads(there.read_text())
        if not here.exists():  # a table the batch started (a protocol table): on its recipes' schedule only
            base = load_raw(REPO / GROUPS[next(g for g, t in TABLES.items() if t == name)][1] / "_base.yaml")
            want = {"epochs": base["train"]["epochs"], "per_class": base["data"]["train_per_class"]}
            got = {k: theirs["args"].get(k) for k in want}
            if got != want:
                raise SystemExit(f"{there}: {got}, but its recipes train {want}; not merged")
            write_json(here, theirs)
            added += [f"{name}: {r['arm']} seed {r['seed']}" for r in theirs["runs"]]
            continue
        ours = json.loads(here.read_text())
        for key in ("epochs", "per_class", "student", "configs"):
            a, b = theirs["args"].get(key), ours["args"].get(key)
            if a != b and not (key == "configs" and None in (a, b)):  # older files did not record the folder
                raise SystemExit(f"{there}: {key} {theirs['args'].get(key)} but {here} has "
                                 f"{ours['args'].get(key)}; not merged")
        have = {(r["arm"], r["seed"]) for r in ours["runs"]}
        new = [r for r in theirs["runs"] if (r["arm"], r["seed"]) not in have]
        ours["runs"] += new
        added += [f"{name}: {r['arm']} seed {r['seed']}" for r in new]
        write_json(here, ours)
    there, here = folder / "probes_catalogue.json", results / "probes_catalogue.json"
    if there.exists():
        theirs = json.loads(there.read_text())
        ours = json.loads(here.read_text()) if here.exists() else {**theirs, "runs": [], "init": {}}
        if (ours.get("images"), ours.get("data")) != (theirs.get("images"), theirs.get("data")):
            raise SystemExit(f"{there}: probed on other images than {here}; not merged")
        have = {r["run_dir"] for r in ours["runs"]}
        new = [r for r in theirs["runs"] if r["run_dir"] not in have]
        ours["runs"] = sorted(ours["runs"] + new, key=lambda r: r["run_dir"])
        ours["init"] = theirs.get("init", {}) | ours.get("init", {})
        added += [f"probes_catalogue: {r['run_dir']}" for r in new]
        write_json(here, ours)
    return added


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", action="store_true", help="list the missing jobs and stop")
    p.add_argument("--merge", type=Path, default=None, metavar="FOLDER", help="merge a batch's returned files")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks" / "work" / "device")))
    p.add_argument("--results", type=Path, default=RESULTS, help="the result files read and written")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipes' (a smoke test passes fewer)")
    p.add_argument("--per-class", type=int, default=None, help="default: the recipes' (a smoke test passes fewer)")
    p.add_argument("--max-jobs", type=int, default=None, help="run only the first N jobs of the plan")
    p.add_argument("--arms", nargs="+", default=None, help="run only these arms' jobs")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--launch-for", type=float, default=420.0, help="seconds during which new jobs start")
    p.add_argument("--stop-at", type=float, default=540.0, help="seconds after which running jobs are stopped")
    args = p.parse_args()
    if args.plan:
        jobs = plan(args.results)
        for student, arm, seed in jobs:
            print(f"{student} {arm} seed {seed}")
        print(f"{len(jobs)} jobs")
        return 0
    if args.merge is not None:
        for line in merge(args.merge, args.results):
            print("added", line)
        print("then re-render: python benchmarks/cifar10_kd.py --report-only --arms all --name NAME (each table "
              "above; --student mobilenetv2 for its pair), python benchmarks/probes.py --name catalogue "
              "--summary-only, python benchmarks/verdicts.py, python scripts/sync_readme_tables.py")
        return 0
    args.shared, args.work, args.results = args.shared.resolve(), args.work.resolve(), args.results.resolve()
    if (args.epochs or args.per_class) and args.results == RESULTS.resolve():
        p.error("--epochs / --per-class (a smoke test) write other schedules: give --results outside "
                "benchmarks/results, or the tables' runs would be replaced")
    return run_batch(args)


if __name__ == "__main__":
    sys.exit(main())
