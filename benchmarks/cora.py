"""Benchmark: graph distillation and graph unlearning on Planetoid Cora (public split, read offline).

    python benchmarks/cora.py                       # both parts (writes benchmarks/results/cora.json + .md)
    python benchmarks/cora.py --part node           # GNN -> MLP distillation only
    python benchmarks/cora.py --part unlearn        # D2DGN unlearning only

Node classification (FF-G2M's setting, arXiv 2305.10758): a GCN teacher, then MLP students trained as a plain
MLP (CE on the 140 labelled nodes), GLNN (KD on the teacher's soft labels of all nodes + CE) and FF-G2M (low-
and high-frequency distillation + CE), all with the library's Trainer: Adam lr 0.01, weight decay 5e-4, full
batch, <= 500 epochs, early stopping on validation accuracy (patience 50), test accuracy of the best-val weights;
teacher retrained per seed. Unlearning (D2DGN, arXiv 2309.16173, with GNNDelete's evaluation): see
``distill.graph.unlearning``. Each finished (arm, seed) is written to the JSON at once, so an interrupted run
resumes where it stopped. Data: ../shared/data/planetoid (or --data: any folder with the ind.cora.* files).
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

from distill.core.compose import Composite
from distill.data.planetoid import GraphData, load_planetoid
from distill.graph.node import graph_train_config, train_node_classifier
from distill.methods.graph_kd import FFG2M, GLNN
from distill.methods.logits import CrossEntropy
from distill.models.gnn import GRAPH_MODELS
from distill.models.weights import read_state_dict
from distill.train.checkpoint import save_weights
from distill.train.trainer import seed_everything

REPO = Path(__file__).resolve().parents[1]
NODE_ARMS = ("teacher", "mlp", "glnn", "ffg2m")
UNLEARN_ARMS = ("original", "retrain", "gradient_ascent", "d2dgn", "d2dgn_warm")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(path)


def teacher_model(args: argparse.Namespace, graph: GraphData, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or reload) the seed's GNN teacher."""
    arch = f"graph_{args.teacher}"
    model = GRAPH_MODELS[arch](graph.num_features, graph.num_classes, hidden=args.hidden, num_layers=args.layers)
    weights = args.work / f"teacher_{args.teacher}_h{args.hidden}_l{args.layers}_seed{seed}.safetensors"
    if weights.exists():
        model.load_state_dict(read_state_dict(weights))
        return model, {}
    seed_everything(seed)
    model = GRAPH_MODELS[arch](graph.num_features, graph.num_classes, hidden=args.hidden, num_layers=args.layers)
    run = train_node_classifier(graph, model, Composite({"ce": CrossEntropy()}),
                                graph_train_config(seed, epochs=args.epochs),
                                args.work / f"runs/h{args.hidden}/teacher{seed}")
    save_weights(weights, model.state_dict())
    return model, {"test_accuracy": run.test_accuracy, "val_accuracy": run.val_accuracy, "epochs": run.epochs,
                   "wall_time_s": run.wall_time_s}


def node_part(args: argparse.Namespace, graph: GraphData, results: dict[str, Any], out: Path) -> None:
    node = results.setdefault("node", {})
    for seed in args.seeds:
        teacher, record = teacher_model(args, graph, seed)
        if record:
            node[f"teacher/seed{seed}"] = record
            save(out, results)
        for arm in NODE_ARMS[1:]:
            key = f"{arm}/seed{seed}"
            if key in node:
                continue
            seed_everything(seed)
            student = GRAPH_MODELS["graph_mlp"](graph.num_features, graph.num_classes, hidden=args.hidden,
                                                num_layers=args.layers)
            method = {"mlp": CrossEntropy(), "glnn": GLNN(lam=args.lam),
                      "ffg2m": FFG2M(lam=args.lam, tau=args.tau)}[arm]
            run = train_node_classifier(graph, student, Composite({arm: method}),
                                        graph_train_config(seed, epochs=args.epochs),
                                        args.work / f"runs/h{args.hidden}/{arm}{seed}",
                                        teacher=None if arm == "mlp" else teacher,
                                        train_on="train" if arm == "mlp" else "all")
            node[key] = {"test_accuracy": run.test_accuracy, "val_accuracy": run.val_accuracy,
                         "epochs": run.epochs, "wall_time_s": run.wall_time_s}
            print(f"[node] {key}: test {run.test_accuracy:.4f} (val {run.val_accuracy:.4f}, {run.epochs} epochs)",
                  flush=True)
            save(out, results)


def unlearn_part(args: argparse.Namespace, graph: GraphData, results: dict[str, Any], out: Path) -> None:
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
    node = results.get("node", {})
    if node:
        lines += ["## Node classification (test accuracy %, best-val weights, mean ± std over seeds)", "",
                  "| model | test accuracy | seeds | mean epochs |", "|---|---|---|---|"]
        names = {"teacher": f"{args.teacher.upper()} teacher", "mlp": "MLP (CE only)", "glnn": "GLNN (MLP)",
                 "ffg2m": "FF-G2M (MLP)"}
        for arm in NODE_ARMS:
            recs = [v for k, v in node.items() if k.startswith(arm + "/")]
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
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "planetoid")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "cora")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="cora")
    p.add_argument("--part", choices=["all", "node", "unlearn"], default="all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--teacher", choices=["gcn", "sage", "gat"], default="gcn")
    p.add_argument("--hidden", type=int, default=512, help="width of teacher and student (FF-G2M Cora: 512)")
    p.add_argument("--layers", type=int, default=3, help="layers of teacher and student (FF-G2M Cora: 3)")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--lam", type=float, default=0.4, help="weight of CE (FF-G2M Cora/GCN: 0.4)")
    p.add_argument("--tau", type=float, default=1.5, help="HFD temperature (FF-G2M Cora/GCN: 1.5)")
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
    graph = load_planetoid(args.data, "cora").row_normalized()
    out = args.out / f"{args.name}.json"
    results = load(out)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("data", "work", "out", "name", "part", "threads")}
    results.setdefault("settings", {}).update(settings)
    start = time.time()
    if args.part in ("all", "node"):
        node_part(args, graph, results, out)
    if args.part in ("all", "unlearn"):
        unlearn_part(args, graph, results, out)
    save(out, results)
    write_table(args, results, args.out / f"{args.name}.md")
    print(f"done in {time.time() - start:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
