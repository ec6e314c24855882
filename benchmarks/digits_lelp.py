"""Benchmark: LELP on a few-class problem, the demonstration of its spec (scikit-learn digits, binarised).

    python benchmarks/digits_lelp.py            # about a minute; writes benchmarks/results/digits_lelp.{json,md}

Data: the 1,797 8x8 digit images that scikit-learn ships, as 64 pixel values standardised on the training rows,
with the binary label y' = [digit >= 5]; 5 stratified 60/40 splits (stratified by digit), committed as .npz files
in benchmarks/data/digits/ (``scripts/make_digits_npz.py`` writes them; no scikit-learn needed to run this).
Every run is a recipe of ``configs/digits/`` swept through ``benchmarks/sweep.py`` / ``build_experiment``, split k
being seed k (the sweep points the recipe at split k's files and sets LELP's seed to k):

- stage ``teacher.yaml`` (MLP 64-256-256-2, CE on the binary labels only), once per split, reused when finished;
- ``ce``: the student (MLP 64-16-2) on the binary labels alone;
- ``kd_t1`` / ``kd_t4``: vanilla KD, no label term (alpha = 0), T = 1 and T = 4;
- ``lelp_s2`` / ``lelp_s5``: LELP with S = 2 or 5 pseudo-subclasses per class (beta 1, alpha 0; the method's
  C * S head on the student's 16-d hidden layer);
- ``oracle``: the student trained on the true digit (S = 5 "subclasses" that are the real ones), predicting
  the class whose five digit logits have the larger logsumexp.

Evaluation applied to each trained run (no training): binary test accuracy (the oracle's grouped by logsumexp)
and, for LELP, the NMI between the teacher's subclass arg-max and the hidden digit on the test rows (needs
scikit-learn; left out without it). LELP's spec calls it working if it beats vanilla KD on mean binary test
accuracy and if that NMI exceeds 0.2. Each finished (arm, split) is written to the JSON at once (resumable).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import Sweep, discover_arms, previous_runs, run_stage  # noqa: E402

from distill import FeatureTaps  # noqa: E402
from distill.experiment import Experiment  # noqa: E402
from distill.tasks import VectorClassification  # noqa: E402
from distill.tasks.vectors.data import read_vectors  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "digits"
DATA = REPO / "benchmarks" / "data" / "digits"
STAGE = "teacher"
ARMS = ["ce", "kd_t1", "kd_t4", "lelp_s2", "lelp_s5", "oracle"]
GROUP = {"oracle": 5}  # the oracle's logits are (class, digit within class)


def split_files(k: int) -> dict[str, Path]:
    folder = DATA / f"split{k}"
    return {name: folder / f"{name}.npz" for name in ("train", "test", "train_digits", "test_digits")}


@torch.no_grad()
def accuracy(model: nn.Module, task: VectorClassification, data: Any, group: int = 1) -> float:
    """Binary test accuracy; with ``group`` > 1 the model has 2 * group logits and class c is the logsumexp of
    its ``group`` logits (the oracle's digits 0-4 and 5-9)."""
    batch = task.prepare(task.fetch(data, torch.arange(len(data))), train=False, generator=None)
    model = model.cpu().eval()
    z = model(batch.inputs)
    if group > 1:
        z = torch.logsumexp(z.view(z.shape[0], -1, group), -1)
    return float((z.argmax(1) == batch.labels).float().mean())


@torch.no_grad()
def subclass_nmi(exp: Experiment, data: Any, digits: torch.Tensor) -> float | None:
    """NMI between the teacher's subclass arg-max (over LELP's C * S targets) and the true digit."""
    try:
        from sklearn.metrics import normalized_mutual_info_score
    except ImportError:
        return None
    method = exp.methods.methods["lelp"]
    teacher = exp.live_teacher.model.cpu().eval()
    batch = exp.task.prepare(exp.task.fetch(data, torch.arange(len(data))), train=False, generator=None)
    tap = method.teacher_feature
    with FeatureTaps(teacher, [tap]).capture() as feats:
        logits = teacher(batch.inputs)
    target = method.teacher_targets(feats[tap], logits)
    return float(normalized_mutual_info_score(digits.numpy(), target.flatten(1).argmax(1).numpy()))


def evaluate_run(arm: str, exp: Experiment, k: int) -> dict[str, Any]:
    """The binary test accuracy of a trained run (and LELP's subclass NMI) on split ``k``."""
    files = split_files(k)
    test = read_vectors(files["test"], "label", "test")
    out: dict[str, Any] = {"accuracy": accuracy(exp.module.inference_model(), exp.task, test, GROUP.get(arm, 1))}
    if arm.startswith("lelp"):
        digits = read_vectors(files["test_digits"], "label", "test").tensors[1]
        nmi = subclass_nmi(exp, test, digits)
        if nmi is not None:
            out["nmi"] = nmi
    return out


def write_table(args: argparse.Namespace, results: dict[str, Any]) -> Path:
    runs = results["runs"]

    def mean_sd(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"

    by_arm = {a: sorted((r for r in runs if r["arm"] == a), key=lambda r: r["seed"]) for a in ARMS}
    ce = statistics.mean(r["accuracy"] for r in by_arm["ce"]) if by_arm["ce"] else None
    teachers = [t["accuracy"] for t in results.get("teachers", {}).values()]
    lines = [
        f"scikit-learn digits binarised (digit >= 5), {len(args.seeds)} stratified 60/40 splits (1,078 train / 719 "
        f"test rows), recipes configs/digits/ (60 epochs, SGD lr 0.05 cosine, batch 64). Teacher MLP 64-256-256-2: "
        f"{mean_sd(teachers) if teachers else '-'}% binary test accuracy. Students MLP 64-16-(2 or 2S).",
        "",
        "| arm | binary test accuracy (%) mean ± sd | vs CE | per split | NMI(teacher subclass, digit) |",
        "|---|---|---|---|---|",
    ]
    for arm, recs in by_arm.items():
        if not recs:
            continue
        accs = [r["accuracy"] for r in recs]
        gain = "" if ce is None or arm == "ce" else f"{100 * (statistics.mean(accs) - ce):+.2f}"
        nmi = [r["nmi"] for r in recs if "nmi" in r]
        lines.append(f"| {arm} | {mean_sd(accs)} | {gain} | {', '.join(f'{100 * a:.1f}' for a in accs)} | "
                     f"{f'{statistics.mean(nmi):.3f}' if nmi else ''} |")
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=Path, default=CONFIGS)
    p.add_argument("--splits", type=int, default=5, help="splits 0..N-1 (seeds of the sweep)")
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a --set assignment applied to every run (teachers included), e.g. train.epochs=30")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "digits_lelp")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="digits_lelp")
    args = p.parse_args()
    args.seeds = list(range(args.splits))
    missing = [f for k in args.seeds for f in split_files(k).values() if not f.exists()]
    if missing:
        print(f"{missing[0]}: missing; run scripts/make_digits_npz.py (needs scikit-learn)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    start = time.perf_counter()

    def data(k: int, digits: bool = False) -> list[str]:
        f = split_files(k)
        suffix = "_digits" if digits else ""
        return [f"data.train={f['train' + suffix]}", f"data.eval={f['test' + suffix]}"]

    results_path = args.out / f"{args.name}.json"
    results: dict[str, Any] = {"args": {"configs": str(args.configs), "sets": args.sets}, "runs": [],
                               "teachers": {}}
    results["runs"] = previous_runs(results_path, results, ("sets",))
    if results_path.exists() and results["runs"]:
        results["teachers"] = json.loads(results_path.read_text()).get("teachers", {})
    teacher_path = args.configs / f"{STAGE}.yaml"
    if any(a not in ("ce", "oracle") for a in args.arms):
        for k in args.seeds:  # one teacher per split, trained once
            stage = run_stage(teacher_path, [*data(k), f"seed={k}", f"output_dir={work / f'teacher-split{k}'}",
                                             *args.sets])
            results["teachers"][str(k)] = {"accuracy": stage.summary["final"]["accuracy"],
                                           "weights": str(stage.weights)}

    def overrides(arm: str, k: int) -> list[str]:
        sets = [*data(k, digits=arm == "oracle"), f"seed={k}", f"output_dir={work / f'split{k}' / arm}"]
        if arm not in ("ce", "oracle"):
            sets.append(f"teacher.weights={work / f'teacher-split{k}' / 'student.safetensors'}")
        if arm.startswith("lelp"):
            sets.append(f"methods.0.seed={k}")
        return sets + args.sets

    arms = {a: f for a, f in discover_arms(args.configs, ARMS, stages=[STAGE]).items() if a in args.arms}
    sweep = Sweep(arms, args.seeds, results_path, overrides, match_args=("sets",),
                  after_fit=lambda arm, exp: evaluate_run(arm, exp, int(exp.config.seed)), repo=REPO)
    sweep.run(results)
    results["wall_time_s"] = time.perf_counter() - start
    write_json(results_path, results)
    print(write_table(args, results).read_text())
    print(f"total {results['wall_time_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
