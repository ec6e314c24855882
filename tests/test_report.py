"""``distill report``: one self-contained HTML page for runs of four families (image, causal LM, vectors, and a graph
where ../shared's Cora is present), rendered by a real headless browser; and what every run logs beside its losses
(hyperparameters, throughput, the teacher's metric)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED
from helpers import DEMO

from distill.cli import main
from distill.config import parse_config
from distill.experiment import build_experiment
from distill.train.logs import read_metrics


def train(text: str, tmp_path: Path, name: str) -> Path:
    cfg = parse_config(yaml.safe_load(text), base_dir=tmp_path)
    build_experiment(cfg, tmp_path / name).fit()
    return tmp_path / name


def vector_yaml(tmp_path: Path) -> Path:
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:10], y=y[:10])
    path = tmp_path / "vec.yaml"
    path.write_text(f"""
task: vector_classification
output_dir: {tmp_path / 'vec'}
data: {{train: train.npz, eval: test.npz}}
student: {{arch: mlp, options: {{hidden: 16}}}}
teacher: {{arch: mlp, weights: random, options: {{hidden: 32}}}}
methods: [{{name: ce, weight: 0.5}}, {{name: kd, temperature: 2}}]
train: {{epochs: 2, batch_size: 8, optimizer: adamw, lr: 0.01, progress: false, log_every: 1}}
""")
    return path


def test_train_prints_teacher_metric_and_logs_hparams_and_throughput(tmp_path, capsys):
    cfg = vector_yaml(tmp_path)
    assert main(["train", str(cfg)]) == 0
    err = capsys.readouterr().err
    teacher = json.loads(next(line for line in err.splitlines() if line.startswith('{"teacher_eval"')))
    # 3 classes: no top5 (every label is among the top 5)
    assert set(teacher["teacher_eval"]) == {"accuracy", "loss"} and teacher["teacher"] == "live teacher"
    rows = read_metrics(tmp_path / "vec")
    hp = {r["metric"]: float(r["value"]) for r in rows if r["split"] == "hparams"}
    assert hp["train.lr"] == 0.01 and hp["train.batch_size"] == 8 and hp["method.ce.weight"] == 0.5
    assert hp["method.kd.temperature"] == 2
    assert {r["metric"]: float(r["value"]) for r in rows if r["split"] == "teacher"}["accuracy"] == pytest.approx(
        teacher["teacher_eval"]["accuracy"], abs=1e-6)
    speed = [(int(r["step"]), float(r["value"])) for r in rows if r["metric"] == "examples_per_s"]
    assert [s for s, _ in speed] == [5, 10] and all(v > 0 for _, v in speed)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (tmp_path / "vec" / "tb").iterdir():
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/examples_per_s", "teacher/accuracy", "hparams/train.lr", "eval/accuracy"} <= tags
    # a resumed run neither prints the teacher again nor logs the hyperparameters twice
    assert main(["train", str(cfg)]) == 0
    assert "teacher_eval" not in capsys.readouterr().err
    again = read_metrics(tmp_path / "vec")
    assert sum(r["split"] == "hparams" for r in again) == len(hp)


def test_train_evaluates_the_live_model_behind_a_cached_teacher(tmp_path, capsys):
    cfg = vector_yaml(tmp_path)
    assert main(["train", str(cfg), "--output-dir", str(tmp_path / "live")]) == 0
    live = json.loads(next(line for line in capsys.readouterr().err.splitlines() if line.startswith('{"teacher_')))
    text = cfg.read_text().replace("hidden: 32}}", f"hidden: 32}}, cache: {{path: {tmp_path / 'c'}}}}}")
    cfg.write_text(text)
    assert main(["train", str(cfg)]) == 0
    cached = json.loads(next(line for line in capsys.readouterr().err.splitlines() if line.startswith('{"teacher_')))
    assert cached["teacher"] == "live teacher (training reads its cache)"
    assert cached["teacher_eval"] == live["teacher_eval"]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> list[Path]:
    pytest.importorskip("transformers")
    tmp_path = tmp_path_factory.mktemp("runs")
    image = train(f"""
output_dir: x
data: {{train: {DEMO}, eval: {DEMO}, train_per_class: 2, eval_per_class: 1, eval_split: test}}
student: {{arch: resnet20}}
methods: [{{name: ce}}]
train: {{epochs: 2, batch_size: 10, progress: false, log_every: 1}}
""", tmp_path, "image")
    from test_methods_llm_data import corpus, make_tokenizer

    make_tokenizer().save_pretrained(tmp_path / "tok")
    corpus(tmp_path)
    lm = train("""
task: causal_lm
data: {tokenizer: tok, text: input.txt, block_size: 16}
student: {arch: llama, options: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32,
          max_positions: 64}}
methods: [{name: lm_ce}]
train: {epochs: 2, batch_size: 4, optimizer: adamw, lr: 0.001, progress: false, log_every: 1}
""", tmp_path, "lm")
    assert main(["train", str(vector_yaml(tmp_path))]) == 0  # the command line also logs the teacher's metric
    runs = [image, lm, tmp_path / "vec"]
    planetoid = SHARED / "data" / "planetoid"
    if planetoid.exists() and importlib.util.find_spec("torch_geometric") is not None:
        runs.append(train(f"""
task: graph_node_classification
data: {{path: {planetoid}, train_on: train}}
student: {{arch: graph_mlp, options: {{hidden: 16, num_layers: 2}}}}
teacher: {{arch: graph_gcn, weights: random, options: {{hidden: 16, num_layers: 2}}}}
methods: [{{name: ce}}, {{name: kd}}]
train: {{epochs: 2, optimizer: adam, lr: 0.01, progress: false, log_every: 1}}
""", tmp_path, "graph"))
    return runs


def test_report_is_one_self_contained_page_with_every_logged_metric(three_runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", *map(str, three_runs), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == len(three_runs)
    html = out.read_text()
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # nothing to fetch: every image is inline
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == len(three_runs)  # a plot per run
    from PIL import Image

    for b64 in images:
        assert Image.open(io.BytesIO(base64.b64decode(b64))).size[0] > 300
    for text in ("<th>image</th>", "<th>lm</th>", "<th>vec</th>", "image_classification", "causal_lm",
                 "vector_classification", "resnet20", "llama", "kd x1", "perplexity", "accuracy",
                 "teacher accuracy", "examples/s (mean)"):
        assert text in html, text
    if len(three_runs) == 4:  # the graph run (../shared's Cora present)
        assert "<th>graph</th>" in html and "graph_node_classification" in html and "graph_mlp" in html
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r2.html")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(three_runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the page is checked above "
                    "without a browser")
    out = tmp_path / "report.html"
    assert main(["report", *map(str, three_runs), "--out", str(out)]) == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--window-size=1280,2400", f"--screenshot={shot}",
                           out.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page_errors = [line for line in proc.stderr.splitlines()
                   if "CONSOLE" in line or "ERR_" in line or "Uncaught" in line or "Failed to load" in line]
    assert not page_errors, page_errors
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400) and shot.stat().st_size > 20_000
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 50  # text, tables and plots, not a blank page


def test_run_shorter_than_log_every_still_logs_its_training_loss(tmp_path):
    """The last step is always logged, so the report's loss panel of a short run is not empty."""
    text = vector_yaml(tmp_path).read_text().replace("log_every: 1", "log_every: 1000")
    run = train(text, tmp_path, "short")
    rows = [r for r in read_metrics(run) if r["split"] == "train" and r["metric"] == "loss"]
    assert [int(r["step"]) for r in rows] == [10]  # 2 epochs x 5 batches: the final step only
