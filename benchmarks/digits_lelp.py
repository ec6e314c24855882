"""Benchmark: LELP on a few-class problem, the demonstration of its spec (scikit-learn digits, binarised).

    python benchmarks/digits_lelp.py            # about a minute; writes benchmarks/results/digits_lelp.{json,md}

Data: the 1,797 8x8 digit images that scikit-learn ships (no download), as 64 pixel values standardised on the
training rows, with the binary label y' = [digit >= 5]; 5 stratified 60/40 splits (stratified by digit). The
teacher (MLP 64-256-256-2) is trained on the binary labels only; the students are MLPs 64-16-(2 or 2S).

Arms, all with the library's trainer (same schedule, seed = split):

- ``ce``: the student on the binary labels alone;
- ``kd_t1`` / ``kd_t4``: vanilla KD, no label term (alpha = 0), T = 1 and T = 4;
- ``lelp_s2`` / ``lelp_s5``: LELP with S = 2 or 5 pseudo-subclasses per class (beta 1, alpha 0; the method's
  C * S head on the student's 16-d hidden layer);
- ``oracle``: the student trained on the true digit (S = 5 "subclasses" that are the real ones), predicting
  the class whose five digit logits have the larger logsumexp.

LELP's spec calls it working if it beats vanilla KD on mean binary test accuracy and if the teacher's subclass
arg-max carries information about the hidden digit (NMI > 0.2 on the test rows). Both are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import Composite, FeatureTaps, FrozenTeacher
from distill.methods.lelp import LELP
from distill.methods.logits import KD, CrossEntropy
from distill.tasks import VectorClassification, vector_dataset
from distill.train import DistillModule, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
ARMS = ["ce", "kd_t1", "kd_t4", "lelp_s2", "lelp_s5", "oracle"]
TEACHER_EMBEDDING = "4:input"  # the 256-d input of the teacher's last layer
STUDENT_HIDDEN = "2:input"  # the 16-d input of the student's last layer


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def load_digits_splits(n_splits: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedShuffleSplit

    x, digit = load_digits(return_X_y=True)
    splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=0.4, random_state=0)
    splits = [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in splitter.split(x, digit)]
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(digit), splits


def fit(student: nn.Module, methods: Composite, teacher: FrozenTeacher | None, task: VectorClassification,
        train: Any, test: Any, args: argparse.Namespace, seed: int, run_dir: Path) -> DistillModule:
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=args.lr, momentum=0.9, weight_decay=5e-4,
                      schedule="cosine", seed=seed, deterministic=True, eval_every=args.epochs, log_every=50,
                      progress=False, checkpoint_every_epochs=0, drop_last=False)
    module = DistillModule(student, methods, teacher, task)
    Trainer(module, train, test, cfg, run_dir=run_dir).fit(resume=False)
    return module


@torch.no_grad()
def accuracy(model: nn.Module, task: VectorClassification, data: Any, group: int = 1) -> float:
    """Binary test accuracy; with ``group`` > 1 the model has 2 * group logits and class c is the logsumexp of
    its ``group`` logits (the oracle's digits 0-4 and 5-9)."""
    batch = task.prepare(task.fetch(data, torch.arange(len(data))), train=False, generator=None)
    model.eval()
    z = model(batch.inputs)
    if group > 1:
        z = torch.logsumexp(z.view(z.shape[0], -1, group), -1)
    return float((z.argmax(1) == batch.labels).float().mean())


@torch.no_grad()
def subclass_nmi(method: LELP, teacher: nn.Module, task: VectorClassification, data: Any,
                 digits: torch.Tensor) -> float:
    """NMI between the teacher's subclass arg-max (over the C * S targets) and the true digit."""
    from sklearn.metrics import normalized_mutual_info_score

    batch = task.prepare(task.fetch(data, torch.arange(len(data))), train=False, generator=None)
    teacher.eval()
    with FeatureTaps(teacher, [TEACHER_EMBEDDING]).capture() as feats:
        logits = teacher(batch.inputs)
    target = method.teacher_targets(feats[TEACHER_EMBEDDING], logits)
    return float(normalized_mutual_info_score(digits.numpy(), target.flatten(1).argmax(1).numpy()))


def run_split(args: argparse.Namespace, k: int, x: torch.Tensor, digit: torch.Tensor,
              split: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    tr, te = split
    binary = (digit >= 5).long()
    train, test = vector_dataset(x[tr], binary[tr]), vector_dataset(x[te], binary[te])
    task = VectorClassification(*VectorClassification.fit_standardizer(train))
    runs = args.work / f"split{k}"
    torch.manual_seed(1000 + k)
    teacher_model = mlp([64, 256, 256, 2])
    fit(teacher_model, Composite({"ce": CrossEntropy()}), None, task, train, test, args, k, runs / "teacher")
    teacher = FrozenTeacher(teacher_model)
    out: dict[str, Any] = {"split": k, "teacher": accuracy(teacher_model, task, test), "arms": {}, "nmi": {}}
    for arm in args.arms:
        torch.manual_seed(k)  # every arm's student starts from the same weights within a split
        if arm == "oracle":
            student = mlp([64, 16, 10])
            digits_train = vector_dataset(x[tr], digit[tr])
            digits_test = vector_dataset(x[te], digit[te])
            fit(student, Composite({"ce": CrossEntropy()}), None, task, digits_train, digits_test, args, k,
                runs / arm)
            # digits 0-4 are class 0 and 5-9 class 1: view the 10 logits as (class, digit within class)
            out["arms"][arm] = accuracy(student, task, test, group=5)
            continue
        student = mlp([64, 16, 2])
        if arm == "ce":
            methods = Composite({"ce": CrossEntropy()})
        elif arm.startswith("kd_t"):
            methods = Composite({"kd": KD(temperature=float(arm[4:]))})
        else:
            s = int(arm.split("_s")[1])
            methods = Composite({"lelp": LELP(subclasses=s, beta=args.beta, student=STUDENT_HIDDEN,
                                              teacher=TEACHER_EMBEDDING, seed=k)})
        module = fit(student, methods, teacher, task, train, test, args, k, runs / arm)
        out["arms"][arm] = accuracy(module.inference_model(), task, test)
        if arm.startswith("lelp"):
            out["nmi"][arm] = subclass_nmi(module.methods.methods["lelp"], teacher_model, task, test, digit[te])
    return out


def write_table(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    splits = result["splits"]

    def mean_sd(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"

    ce = statistics.mean(s["arms"]["ce"] for s in splits) if "ce" in args.arms else None
    lines = [
        f"scikit-learn digits binarised (digit >= 5), {len(splits)} stratified 60/40 splits (1,078 train / 719 "
        f"test rows), {args.epochs} epochs, SGD lr {args.lr} cosine, batch 64. Teacher MLP 64-256-256-2: "
        f"{mean_sd([s['teacher'] for s in splits])}% binary test accuracy. Students MLP 64-16-(2 or 2S).",
        "",
        "| arm | binary test accuracy (%) mean ± sd | vs CE | per split | NMI(teacher subclass, digit) |",
        "|---|---|---|---|---|",
    ]
    for arm in args.arms:
        accs = [s["arms"][arm] for s in splits]
        gain = "" if ce is None or arm == "ce" else f"{100 * (statistics.mean(accs) - ce):+.2f}"
        nmi = [s["nmi"][arm] for s in splits if arm in s["nmi"]]
        lines.append(f"| {arm} | {mean_sd(accs)} | {gain} | {', '.join(f'{100 * a:.1f}' for a in accs)} | "
                     f"{f'{statistics.mean(nmi):.3f}' if nmi else ''} |")
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=1.0, help="LELP's tempering (our default; the paper's is unknown)")
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "digits_lelp")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="digits_lelp")
    args = p.parse_args()
    try:
        x, digit, splits = load_digits_splits(args.splits)
    except ImportError:
        print("needs scikit-learn (pip install scikit-learn; the dev and retrieval extras bring it)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "splits": []}
    for k, split in enumerate(splits):
        r = run_split(args, k, x, digit, split)
        print(f"split {k}: teacher {100 * r['teacher']:.2f}  " + "  ".join(
            f"{a} {100 * v:.2f}" for a, v in r["arms"].items()) + f"  nmi {r['nmi']}", flush=True)
        result["splits"].append(r)
    result["wall_time_s"] = time.perf_counter() - start
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(write_table(args, result).read_text())
    print(f"total {result['wall_time_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
