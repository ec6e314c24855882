"""Top-5 accuracy only where it means something (more than 5 classes): absent from the printed, CSV, TensorBoard and
summary metrics otherwise, and ``train.early_stopping_metric: top5`` refused before training on such data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill.config import ConfigError, parse_config
from distill.core.batch import Batch
from distill.experiment import build_experiment
from distill.tasks.metrics import ClassificationMetrics
from distill.train.logs import read_metrics


def metrics_of(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    m = ClassificationMetrics()
    m.update(logits, Batch(inputs=None, labels=labels))
    return m.compute()


def test_top5_is_reported_only_above_five_classes():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0])
    few = metrics_of(torch.randn(4, 3, generator=g), labels)
    assert set(few) == {"accuracy", "loss"}  # with 3 classes every label is in the top 5: not reported
    assert set(metrics_of(torch.randn(4, 5, generator=g), labels)) == {"accuracy", "loss"}
    scores = torch.arange(7, 0, -1).float()  # class 0 ranked first, class 6 last
    logits = scores.repeat(4, 1)
    many = metrics_of(logits, torch.tensor([0, 4, 5, 6]))  # ranks 1, 5, 6, 7
    assert many["accuracy"] == pytest.approx(0.25)
    assert many["top5"] == pytest.approx(0.5)


def write_vectors(tmp_path: Path, classes: int) -> Path:
    g = np.random.default_rng(0)
    x = g.normal(size=(64, 4)).astype("float32")
    y = np.arange(64) % classes
    x[:, 0] += y
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:16], y=y[:16])
    return tmp_path


def config(tmp_path: Path, classes: int, **train) -> object:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_vectors(tmp_path, classes)
    raw = yaml.safe_load("""
task: vector_classification
data: {train: train.npz, eval: test.npz}
student: {arch: mlp, options: {hidden: 8}}
methods: [{name: ce}]
train: {epochs: 2, batch_size: 16, optimizer: adamw, lr: 0.01, progress: false, log_every: 1}
""")
    raw["train"].update(train)
    return parse_config(raw, base_dir=tmp_path)


def test_three_classes_log_no_top5_anywhere(tmp_path):
    summary = build_experiment(config(tmp_path, 3), tmp_path / "run").fit()
    assert set(summary["final"]) == {"accuracy", "loss"}
    assert all("top5" not in record for record in summary["history"])
    assert "top5" not in json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    logged = {r["metric"] for r in read_metrics(tmp_path / "run") if r["split"] == "eval"}
    assert "accuracy" in logged and "top5" not in logged
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (tmp_path / "run" / "tb").iterdir():
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert "eval/accuracy" in tags and "eval/top5" not in tags


def test_early_stopping_on_top5_refused_before_training_with_few_classes(tmp_path):
    cfg = config(tmp_path, 4, early_stopping_metric="top5", early_stopping_patience=2)
    with pytest.raises(ConfigError, match=r"train\.early_stopping_metric: 'top5'.*\['accuracy', 'loss'\].*4"):
        build_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()  # nothing trained


def test_early_stopping_on_top5_works_with_many_classes(tmp_path):
    cfg = config(tmp_path, 8, early_stopping_metric="top5", early_stopping_patience=5)
    summary = build_experiment(cfg, tmp_path / "run").fit()
    assert 0.0 <= summary["best"] <= 1.0 and summary["best"] == max(r["top5"] for r in summary["history"])
    assert (tmp_path / "run" / "best" / "student.safetensors").exists()


def test_report_shows_a_dash_for_top5_of_a_few_class_run(tmp_path):
    import re

    from distill.report.html import build_report

    few = build_experiment(config(tmp_path / "a", 3, epochs=1), tmp_path / "few")
    few.fit()
    many = build_experiment(config(tmp_path / "b", 8, epochs=1), tmp_path / "many")
    many.fit()
    html = build_report([tmp_path / "few", tmp_path / "many"])
    final = html[html.index("<h2>Final metrics</h2>"):html.index("<h2>Logged metrics</h2>")]
    row = re.search(r"<tr><th>top5</th>(.*?)</tr>", final).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[0] == "&ndash;" and 0.0 <= float(cells[1]) <= 1.0
