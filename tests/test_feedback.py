"""Feedback while a run goes: line-buffered logs off a terminal (a redirected ``distill train`` shows its first
epoch before it ends), progress lines of a teacher-cache build, and ``train.trackers`` (TensorBoard through
Accelerate, beside metrics.csv; a tracker that is not installed is refused naming its package)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from distill.cli import main
from distill.config import ConfigError, parse_config
from distill.experiment import build_experiment
from distill.train.logs import read_metrics

SRC = Path(__file__).resolve().parents[1] / "src"


def vector_config(tmp_path: Path, **train: object) -> dict:
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:10], y=y[:10])
    return {"task": "vector_classification", "output_dir": str(tmp_path / "run"),
            "data": {"train": "train.npz", "eval": "test.npz"},
            "student": {"arch": "mlp", "options": {"hidden": 16}},
            "teacher": {"arch": "mlp", "weights": "random", "options": {"hidden": 32}},
            "methods": [{"name": "ce", "weight": 0.5}, {"name": "kd", "temperature": 2}],
            "train": {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 0.01, "progress": False,
                      "log_every": 1, **train}}


def test_the_cli_makes_redirected_output_line_buffered(monkeypatch, capsys):
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    assert not out.line_buffering and not err.line_buffering
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["methods", "--task", "ranking", "--json"]) == 0
    assert out.line_buffering and err.line_buffering
    out.seek(0)
    assert '"margin_mse"' in out.read()  # written through at once: no flush was needed


def test_a_redirected_train_shows_progress_while_it_runs(tmp_path):
    """``distill train ... > log 2>&1``: the first progress line is in the pipe while the run still sleeps after its
    first step (``step_delay``: 60 s to go); the test then stops the run."""
    raw = vector_config(tmp_path, progress=True, progress_every=0.001, batch_size=40, step_delay=60.0)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "distill", "train", str(tmp_path / "run.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            if line.startswith("training: "):
                break
        assert proc.poll() is None, seen  # still in its first step's delay: the line came as it was printed
        assert seen[-1].startswith("training: 1/2 (50%), ") and "ETA" in seen[-1] and "loss" in seen[-1], seen
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_training_off_a_terminal_prints_progress_and_epoch_lines(tmp_path, capsys):
    cfg = parse_config(vector_config(tmp_path, progress=True, progress_every=1000.0), base_dir=tmp_path)
    build_experiment(cfg).fit()
    err = capsys.readouterr().err.splitlines()
    epochs = [line for line in err if line.startswith("epoch ")]
    assert [e.split(":")[0] for e in epochs] == ["epoch 1/2", "epoch 2/2"] and "accuracy" in epochs[0]
    assert [line.split(",")[0] for line in err if line.startswith("training: ")] == ["training: 10/10 (100%)"]


def test_a_cache_build_reports_progress_off_a_terminal(tmp_path, capsys):
    raw = vector_config(tmp_path, progress=True, progress_every=0.001)
    raw["teacher"]["cache"] = {"path": str(tmp_path / "cache")}
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    assert exp.teacher.info()["examples"] == 40
    err = capsys.readouterr().err.splitlines()
    assert "cache build: 40/40 (100%)" in err[-1] and "elapsed" in err[-1]


def test_tensorboard_tracker_gets_the_metrics_of_metrics_csv(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = parse_config(vector_config(tmp_path, trackers=["tensorboard"]), base_dir=tmp_path)
    build_experiment(cfg).fit()
    folders = [p.parent for p in (tmp_path / "run" / "trackers").rglob("events.out.tfevents.*")]
    assert folders, "no TensorBoard events under RUN/trackers"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    rows = read_metrics(tmp_path / "run")
    csv_acc = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "eval" and r["metric"] == "accuracy"]
    assert len(csv_acc) == 2
    assert [s for s, _ in scalars["eval/accuracy"]] == [s for s, _ in csv_acc]
    assert [v for _, v in scalars["eval/accuracy"]] == pytest.approx([v for _, v in csv_acc], abs=1e-5)
    assert len(scalars["train/loss"]) == 10  # log_every 1: every step of 2 epochs x 5 batches


def test_trackers_also_get_what_the_run_log_adds(tmp_path):
    """``distill train``'s run log (teacher metrics, throughput) reaches the trackers too."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(vector_config(tmp_path, trackers=["tensorboard"])))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    tags = set()
    for events in (tmp_path / "run" / "trackers").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"teacher/accuracy", "train/examples_per_s", "eval/accuracy", "train/loss"} <= tags


def test_a_tracker_that_is_not_installed_is_refused_naming_its_package(tmp_path, monkeypatch):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^train\.trackers\[1\]: 'wandb' needs the package wandb, which is not "
                                          r"installed \(pip install wandb"):
        parse_config(vector_config(tmp_path, trackers=["tensorboard", "wandb"]))
    with pytest.raises(ConfigError, match=r"^train\.trackers\[0\]: Input should be 'tensorboard', 'wandb', "):
        parse_config(vector_config(tmp_path, trackers=["tensorbord"]))
