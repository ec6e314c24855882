"""Run plots do not assume an accuracy metric: runs that logged only a loss, perplexity, ranking or embedding
metrics (or nothing) plot and report without error, showing the metric they logged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from distill.report.html import build_report
from distill.report.plots import headline_metric, plot_runs

PNG = b"\x89PNG\r\n\x1a\n"
#: per task: the evaluation metrics a run of that family logs
FAMILY_METRICS = {
    "loss_only": {},
    "causal_lm": {"nll": 3.2, "perplexity": 24.5, "tokens": 512.0, "teacher_agreement": 0.41},
    "ranking": {"group_accuracy": 0.7, "group_mrr": 0.81, "ndcg@10": 0.44},
    "embedding": {"cosine_to_teacher": 0.93, "spearman": 0.78, "loss": 0.12},
    "vector_classification": {"accuracy": 0.9, "top5": 1.0, "loss": 0.3},
}


def fake_run(root: Path, name: str, task: str, metrics: dict[str, float], epochs: int = 3) -> Path:
    run = root / name
    run.mkdir()
    (run / "distill_config.json").write_text(json.dumps({"task": task, "methods": [{"name": "kd"}]}))
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "split", "metric", "value"])
        for step in range(1, 4 * epochs + 1):
            w.writerow([step, (step - 1) // 4, "train", "loss", 2.0 / step])
        for epoch in range(1, epochs + 1):
            for metric, value in metrics.items():
                w.writerow([4 * epoch, epoch, "eval", metric, value * (1 + 0.1 * (epoch - epochs))])
        w.writerow([0, 0, "hparams", "train.lr", 0.1])
    return run


def test_each_familys_runs_plot_their_own_metric(tmp_path):
    want = {"loss_only": None, "causal_lm": "perplexity", "ranking": "group_mrr", "embedding": "cosine_to_teacher",
            "vector_classification": "accuracy"}
    runs = {family: fake_run(tmp_path, family, family, metrics) for family, metrics in FAMILY_METRICS.items()}
    for family, run in runs.items():
        assert headline_metric({family: run}) == want[family]
        out = plot_runs({family: run}, tmp_path / f"{family}.png", title=family)
        assert out.read_bytes()[:8] == PNG
    html = build_report(list(runs.values()))
    assert html.count("data:image/png;base64,") == len(runs)
    for metrics in FAMILY_METRICS.values():
        for metric, value in metrics.items():
            assert f"<tr><th>{metric}</th>" in html and f"<td>{value:.4g}</td>" in html


def test_a_metric_can_be_chosen_and_missing_logs_are_drawn_as_empty_panels(tmp_path):
    ranked = fake_run(tmp_path, "ranked", "ranking", FAMILY_METRICS["ranking"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert headline_metric({"a": ranked, "b": empty}) == "group_mrr"
    assert plot_runs({"a": ranked, "b": empty}, tmp_path / "ndcg.png", metric="ndcg@10").read_bytes()[:8] == PNG
    assert headline_metric({"b": empty}) is None
    assert plot_runs({"b": empty}, tmp_path / "none.png").read_bytes()[:8] == PNG
