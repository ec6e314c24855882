"""Benchmark: graph distillation and graph unlearning on Planetoid Cora (public split, read offline).

    python benchmarks/cora.py                       # both parts (writes benchmarks/results/cora.json + .md)
    python benchmarks/cora.py --part node           # GNN -> MLP distillation only
    python benchmarks/cora.py --part unlearn        # D2DGN unlearning only

Node classification (FF-G2M's setting, arXiv 2305.10758): the recipes of ``configs/cora/`` swept through
``benchmarks/sweep.py`` / ``build_experiment``: stage ``teacher.yaml`` (a GCN, CE on the 140 labelled nodes),
trained once per seed and reused, whose best-validation weights are the teacher of the distilled arms; then the MLP
students ``mlp`` (CE on the 140 labelled nodes), ``glnn`` (KD on the teacher's soft labels of all nodes + CE) and
``ffg2m`` (low- and high-frequency distillation + CE): Adam lr 0.01, weight decay 5e-4, full batch, <= 500 epochs,
early stopping on validation accuracy (patience 50). The evaluation applied to each trained run (no training) is
the test accuracy of its best-validation weights. ``--hidden``, ``--layers``, ``--epochs``, ``--lam``, ``--tau``
and ``--teacher`` override the recipes' settings only when given (the recipes hold the width-256 run).

Unlearning (D2DGN, arXiv 2309.16173, with GNNDelete's evaluation) is the pipeline
``distill.pipelines.graph_unlearning`` (link prediction, deletion and the unlearning methods, not a methods list),
called as before. Each finished (arm, seed) is written to the JSON at once, so an interrupted run resumes where it
stopped. Data: the recipes' ../shared/data/planetoid (or --data: any folder with the ind.cora.* files).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import portable, write_json  # noqa: E402
from sweep import Stage, Sweep, discover_arms, load_recipe, run_stage, save_run  # noqa: E402

from distill.config import resolve_path  # noqa: E402
from distill.data.planetoid import load_planetoid  # noqa: E402
from distill.experiment import Experiment, build_experiment  # noqa: E402
from distill.models.weights import read_state_dict  # noqa: E402
from distill.train.evaluate import evaluate_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "cora"
STAGE = "teacher"
NODE_ARMS = ("teacher", "mlp", "glnn", "ffg2m")
UNLEARN_ARMS = ("original", "retrain", "gradient_ascent", "d2dgn", "d2dgn_warm")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results, sort_keys=True)


def best_val_record(exp: Experiment) -> dict[str, Any]:
    """The test (and validation) accuracy of a trained run's best-validation weights (``best/student.safetensors``;
    the last weights when no evaluation improved), its epochs and wall time."""
    run_dir = exp.trainer.run_dir
    best = run_dir / "best" / "student.safetensors"
    if best.exists():
        exp.student.load_state_dict(read_state_dict(best))
    n = exp.task.num_nodes
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"test_accuracy": evaluate_model(exp.student, exp.task, exp.eval_data, n, "cpu")["accuracy"],
            "val_accuracy": evaluate_model(exp.student, exp.task, exp.val_data, n, "cpu")["accuracy"],
            "epochs": int(summary["epochs_done"]), "wall_time_s": float(summary["wall_time_s"])}


def teacher_record(stage: Stage, overrides: list[str]) -> dict[str, Any]:
    """The teacher stage's run, evaluated like the arms (its recipe rebuilt; nothing trains)."""
    _, cfg = load_recipe(stage.path, overrides)
    return best_val_record(build_experiment(cfg, stage.run_dir))


def recipe_overrides(args: argparse.Namespace, arm: str) -> list[str]:
    """The command line's settings that differ from the recipes (only those given)."""
    sets = [f"data.path={args.data.resolve()}"] if args.data else []
    if args.hidden is not None:
        sets.append(f"student.options.hidden={args.hidden}")
    if args.layers is not None:
        sets.append(f"student.options.num_layers={args.layers}")
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    if arm == STAGE and args.teacher is not None:
        sets.append(f"student.arch=graph_{args.teacher}")
    if arm in ("glnn", "ffg2m"):
        for key, value in (("hidden", args.hidden), ("num_layers", args.layers)):
            if value is not None:
                sets.append(f"teacher.options.{key}={value}")
        if args.teacher is not None:
            sets.append(f"teacher.arch=graph_{args.teacher}")
        if args.lam is not None:
            sets.append(f"methods.0.lam={args.lam}")
        if arm == "ffg2m" and args.tau is not None:
            sets.append(f"methods.0.tau={args.tau}")
    return sets + args.sets


def node_part(args: argparse.Namespace, results: dict[str, Any], out: Path) -> None:
    work = args.work.resolve()
    arms = {a: f for a, f in discover_arms(args.configs, NODE_ARMS, stages=[STAGE]).items() if a in NODE_ARMS}
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    teacher_path = args.configs / f"{STAGE}.yaml"

    def teacher_sets(seed: int) -> list[str]:
        return [*recipe_overrides(args, STAGE), f"seed={seed}", f"output_dir={work / f'teacher-seed{seed}'}"]

    for seed in args.seeds:  # the seed's teacher: trained once, evaluated, recorded as the row 'teacher'
        stage = run_stage(teacher_path, teacher_sets(seed))
        if (STAGE, seed) not in done or stage.trained:
            record = {"arm": STAGE, "seed": seed, "recipe": str(teacher_path.resolve().relative_to(REPO)),
                      "run_dir": str(stage.run_dir), **teacher_record(stage, teacher_sets(seed))}
            save_run(out, results, record, ())
            print(f"[node] teacher/seed{seed}: test {record['test_accuracy']:.4f}", flush=True)

    def overrides(arm: str, seed: int) -> list[str]:
        sets = [*recipe_overrides(args, arm), f"seed={seed}", f"output_dir={work / f'{arm}-seed{seed}'}"]
        if arm != "mlp":
            sets += [f"teacher.weights={work / f'teacher-seed{seed}' / 'best' / 'student.safetensors'}",
                     f"teacher.cache.path={work / f'teacher_cache-seed{seed}'}"]
        return sets

    sweep = Sweep(arms, args.seeds, out, overrides, metric="test_accuracy", match_args=(),
                  after_fit=lambda arm, exp: best_val_record(exp), repo=REPO)
    sweep.run(results)


def unlearn_part(args: argparse.Namespace, graph: Any, results: dict[str, Any], out: Path) -> None:
    from distill.pipelines.graph_unlearning import UnlearningConfig, run_unlearning

    part = results.setdefault("unlearn", {})
    for setting in args.deletion:
        for seed in args.seeds:
            done = {arm for arm in UNLEARN_ARMS if f"{setting}/{arm}/seed{seed}" in part}
            if done == set(UNLEARN_ARMS):
                continue
            cfg = UnlearningConfig(seed=seed, deletion=setting, d2dgn_epochs=args.d2dgn_epochs,
                                   epochs=args.link_epochs, warm_epochs=args.warm_epochs,
                                   warm_alpha=args.warm_alpha, warm_lr=args.warm_lr)
            for arm, record in run_unlearning(graph, cfg).items():
                part[f"{setting}/{arm}/seed{seed}"] = record
                print(f"[unlearn] {setting}/{arm}/seed{seed}: {record}", flush=True)
            save(out, results)


def mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "-"
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def write_table(args: argparse.Namespace, results: dict[str, Any], path: Path) -> None:
    lines = ["# Cora: GNN -> MLP distillation and graph unlearning", "",
             f"Command: `python benchmarks/cora.py {' '.join(sys.argv[1:])}`".rstrip() + " (results merged across "
             "resumed runs; settings below).", "",
             f"Settings: {json.dumps(results.get('settings', {}))}", ""]
    runs = results.get("runs", [])
    if runs:
        lines += ["## Node classification (test accuracy %, best-val weights, mean ± std over seeds)", "",
                  "| model | test accuracy | seeds | mean epochs |", "|---|---|---|---|"]
        names = {"teacher": "teacher (configs/cora/teacher.yaml)", "mlp": "MLP (CE only)", "glnn": "GLNN (MLP)",
                 "ffg2m": "FF-G2M (MLP)"}
        for arm in NODE_ARMS:
            recs = [r for r in runs if r["arm"] == arm]
            accs = [r["test_accuracy"] for r in recs]
            ep = statistics.mean(r["epochs"] for r in recs) if recs else 0
            lines.append(f"| {names[arm]} | {mean_std(accs)} | {len(accs)} | {ep:.0f} |")
        lines.append("")
    part = results.get("unlearn", {})
    if part:
        lines += ["## Edge unlearning (GNNDelete protocol; AUROC %, MI ratio, wall time s; mean ± std)", ""]
        for setting in sorted({k.split("/")[0] for k in part}):
            lines += [f"### deletion: {setting}", "",
                      "| method | test-edge AUROC (Dt) | deleted-edge AUROC (Df) | MI ratio | wall time (s) | seeds |",
                      "|---|---|---|---|---|---|"]
            for arm in UNLEARN_ARMS:
                recs = [v for k, v in part.items() if k.startswith(f"{setting}/{arm}/")]
                if not recs:
                    continue
                mi = [r["mi_ratio"] for r in recs]
                wall = [r["wall_time_s"] for r in recs]
                lines.append(f"| {arm} | {mean_std([r['dt_auroc'] for r in recs])} | "
                             f"{mean_std([r['df_auroc'] for r in recs])} | {mean_std(mi, 1.0)} | "
                             f"{mean_std(wall, 1.0)} | {len(recs)} |")
            lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=Path, default=CONFIGS, help="the node-classification recipes")
    p.add_argument("--data", type=Path, default=None, help="a folder with ind.cora.* (default: the recipes' path)")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "cora")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="cora")
    p.add_argument("--part", choices=["all", "node", "unlearn"], default="all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--teacher", choices=["gcn", "sage", "gat"], default=None, help="default: the recipes' (gcn)")
    p.add_argument("--hidden", type=int, default=None, help="width of teacher and student (recipes: 256)")
    p.add_argument("--layers", type=int, default=None, help="layers of teacher and student (recipes: 3)")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs (recipes: 500)")
    p.add_argument("--lam", type=float, default=None, help="weight of CE (recipes, FF-G2M Cora/GCN: 0.4)")
    p.add_argument("--tau", type=float, default=None, help="HFD temperature (recipes, FF-G2M Cora/GCN: 1.5)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a --set assignment applied to every node-classification run, teachers included")
    p.add_argument("--deletion", nargs="+", choices=["random", "out"], default=["random"])
    p.add_argument("--link-epochs", type=int, default=300)
    p.add_argument("--d2dgn-epochs", type=int, default=100, help="D2DGN with a re-initialised student")
    p.add_argument("--warm-epochs", type=int, default=60, help="D2DGN with the student started from the preserver")
    p.add_argument("--warm-alpha", type=float, default=0.8)
    p.add_argument("--warm-lr", type=float, default=0.005)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.name}.json"
    results = load(out)
    results.setdefault("runs", [])
    settings = {k: (portable(str(v)) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("data", "work", "out", "name", "part", "threads")}
    earlier = results.get("settings", {}).get("seeds", [])
    settings["seeds"] = sorted({*earlier, *args.seeds})  # the file holds every seed run so far, not only this call's
    results.setdefault("settings", {}).update(settings)
    start = time.time()
    if args.part in ("all", "node"):
        node_part(args, results, out)
    if args.part in ("all", "unlearn"):
        _, probe = load_recipe(args.configs / f"{STAGE}.yaml", recipe_overrides(args, STAGE))
        graph = load_planetoid(resolve_path(probe.data.path, probe.base_dir), "cora").row_normalized()
        unlearn_part(args, graph, results, out)
    ran = {r["seed"] for r in results["runs"]} | {int(k.rsplit("seed", 1)[1]) for k in results.get("unlearn", {})}
    results["settings"]["seeds"] = sorted(ran | set(results["settings"]["seeds"]))  # other processes' seeds too
    save(out, results)
    write_table(args, results, args.out / f"{args.name}.md")
    print(f"done in {time.time() - start:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
