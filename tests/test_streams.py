"""Streams: splits, domain transforms, the setting's metrics, the config section, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from distill.core.errors import ConfigError  # noqa: E402
from distill.streams.data import digits  # noqa: E402
from distill.streams.metrics import clustering_accuracy, forgetting  # noqa: E402
from distill.streams.runner import run_config  # noqa: E402
from distill.streams.section import parse_stream_config  # noqa: E402
from distill.streams.stream import HIDDEN, class_incremental, domain_stream, novel_class_stream  # noqa: E402
from distill.streams.transforms import ColourJitter, blur, image_transform  # noqa: E402
from distill.train.checkpoint import latest_checkpoint, load_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return digits()


def test_class_incremental_split(data):
    s = class_incremental(data, [[0, 1], [2, 3], [4, 5]])
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5)]
    for t in s.tasks:
        assert set(data.y_train[t.train_index].tolist()) == set(t.classes)
        assert set(data.y_test[t.test_index].tolist()) == set(t.classes)
    assert s.seen_classes(1) == [0, 1, 2, 3]
    assert list(s.eval_sets(1)) == ["task0", "task1"]
    with pytest.raises(ValueError, match="already in an earlier task"):
        class_incremental(data, [[0, 1], [1, 2]])


def test_domain_stream_shards_and_fixed_transforms(data):
    s = domain_stream(data, ["identity", "blur", "jitter"], heldout=["invert"], seed=3)
    rows = torch.cat([t.train_index for t in s.tasks])
    assert len(rows) == len(data.y_train) and len(torch.unique(rows)) == len(rows)  # disjoint shards, all rows
    x, _ = s.train_batch(1, torch.arange(4))
    assert torch.allclose(x, blur(data.x_train[s.tasks[1].train_index[:4]]))
    assert list(s.eval_sets(0)) == ["identity", "blur", "jitter", "invert"]
    a, b = image_transform("jitter", 3, seed=5), ColourJitter.from_seed(5, 3)
    img = torch.randn(2, 3, 4, 4)
    assert torch.equal(a(img), b(img)) and not torch.equal(a(img), ColourJitter.from_seed(6, 3)(img))


def test_novel_class_stream_hides_novel_labels(data):
    s = novel_class_stream(data, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    _, y = s.train_batch(1, torch.arange(len(s.tasks[1].train_index)))
    true = data.y_train[s.tasks[1].train_index]
    assert torch.equal(y == HIDDEN, true >= 5) and torch.equal(y[y != HIDDEN], true[true < 5])
    _, y0 = s.train_batch(0, torch.arange(len(s.tasks[0].train_index)))
    assert (y0 < 5).all()


def test_forgetting_and_clustering_accuracy_hand_values():
    acc = [[0.9], [0.6, 0.8], [0.5, 0.7, 0.95]]
    # task 0: best 0.9 -> 0.5 (0.4); task 1: best 0.8 -> 0.7 (0.1)
    assert forgetting(acc) == pytest.approx(0.25)
    assert forgetting(acc[:1]) == 0.0
    y = torch.tensor([5, 5, 6, 6, 7, 7])
    assert clustering_accuracy(torch.tensor([2, 2, 0, 0, 1, 1]), y) == 1.0  # a relabelling is perfect
    assert clustering_accuracy(torch.tensor([0, 0, 0, 1, 1, 2]), y) == pytest.approx(4 / 6)


def test_config_rejects_bad_keys_naming_them():
    base = {"stream": {"kind": "class_incremental", "tasks": [[0, 1], [2, 3]]}, "learner": {"name": "onpro"}}
    parse_stream_config(base)
    cases = [
        ({**base, "stream": {"kind": "class_incremental"}}, "stream.tasks: required for kind class_incremental"),
        ({**base, "stream": {"kind": "domains", "domains": ["sepia"]}}, "unknown domain 'sepia'"),
        ({**base, "learner": {"name": "nope"}}, "learner.name: unknown learner 'nope'"),
        ({**base, "learner": {"name": "onpro", "options": {"buffer_sise": 3}}}, "learner.options.buffer_sise"),
        ({**base, "train": {"lr": -1}}, "train.lr"),
        ({**base, "strem": {}}, "strem: unknown key"),
    ]
    for raw, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_stream_config(raw)


def _raw(learner: dict, out: Path) -> dict:
    return {"stream": {"kind": "class_incremental", "tasks": [[0, 1], [2, 3]]}, "learner": learner,
            "train": {"batch_size": 16, "lr": 2e-3, "checkpoint_every": 5, "epochs_per_task": 1},
            "seed": 1, "output_dir": str(out)}


LEARNERS = {
    "onpro": {"name": "onpro", "options": {"width": 8, "feature_dim": 16, "proj_dim": 8, "buffer_size": 40}},
    "dynamic_ykd": {"name": "dynamic_ykd", "options": {"width": 8, "feature_dim": 16}},
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_resume_after_sigkill_mid_task_is_exact(name, tmp_path):
    ref = run_config(parse_stream_config(_raw(LEARNERS[name], tmp_path / "ref")), resume=False)
    assert len(ref["tasks"]) == 2 and 0 <= ref["tasks"][1]["forgetting"] <= 1
    cfg = tmp_path / "cfg.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(_raw(LEARNERS[name], tmp_path / "killed")))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "DISTILL_TEST_STREAM_KILL": "1:22"}  # task 1 (steps 16-30), global step 22: 2 after the checkpoint of 20
    cmd = [sys.executable, "-m", "distill.streams", str(cfg)]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "killed" / "metrics.json").exists()  # task 0 finished before the kill
    del env["DISTILL_TEST_STREAM_KILL"]
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    a = load_weights(latest_checkpoint(tmp_path / "ref" / "checkpoints") / "student.safetensors")
    b = load_weights(latest_checkpoint(tmp_path / "killed" / "checkpoints") / "student.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    import json

    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["tasks"] == ref["tasks"]


def test_domain_run_reports_every_domain_after_each_task(tmp_path):
    raw = {"stream": {"kind": "domains", "domains": ["identity", "blur"], "heldout": ["invert"]},
           "learner": {"name": "dynamic_ykd", "options": {"width": 8, "feature_dim": 16, "grow_branches": False,
                                                          "distill_weight": 0.0}},
           "train": {"batch_size": 128, "lr": 3e-3}, "output_dir": str(tmp_path)}
    out = run_config(parse_stream_config(raw), resume=False)["tasks"]
    assert [r["name"] for r in out] == ["identity", "blur"]
    for r in out:
        assert set(r["domain_accuracy"]) == {"identity", "blur", "invert"}
        assert r["mean_heldout_domains"] == r["domain_accuracy"]["invert"]
    assert out[0]["mean_seen_domains"] == out[0]["domain_accuracy"]["identity"]


def test_novel_class_run_reports_clustering_accuracy(tmp_path):
    raw = {"stream": {"kind": "novel_classes", "known": [0, 1, 2], "novel": [3, 4]},
           "learner": {"name": "crkd", "options": {"width": 8, "feature_dim": 16, "heads": 2, "hidden": 16}},
           "train": {"batch_size": 128, "lr": 3e-3}, "output_dir": str(tmp_path)}
    out = run_config(parse_stream_config(raw), resume=False)["tasks"]
    assert "novel_clustering_accuracy" not in out[0] and 0 <= out[0]["known_accuracy"] <= 1
    assert 0.5 <= out[1]["novel_clustering_accuracy"] <= 1  # 2 clusters: Hungarian accuracy is at least 1/2


def test_cifar10_jpeg_stream_from_the_shipped_subset():
    raw = {"stream": {"dataset": "cifar10_jpeg", "kind": "domains", "domains": ["identity", "grayscale"],
                      "heldout": ["jitter"],
                      "dataset_options": {"path": "builtin:cifar10_demo.tar.gz", "train_per_class": 6,
                                          "test_per_class": 4}},
           "learner": {"name": "dynamic_ykd"}}
    cfg = parse_stream_config(raw)
    from distill.streams.data import load_dataset

    ds = load_dataset(cfg.stream.dataset, 0, cfg.stream.dataset_options)
    assert ds.x_train.shape == (60, 3, 32, 32) and ds.x_test.shape == (40, 3, 32, 32)
    assert torch.bincount(ds.y_train).tolist() == [6] * 10
    s = domain_stream(ds, ["identity", "grayscale"], ["jitter"])
    gray = s.eval_sets(0)["grayscale"][0]
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    with pytest.raises(ConfigError, match="stream.dataset_options.train_per_clas"):
        parse_stream_config({**raw, "stream": {**raw["stream"], "dataset_options": {"train_per_clas": 3}}})


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "continual").glob("*.yaml")), ids=lambda p: p.name)
def test_continual_recipes_validate(path):
    from distill.streams.section import load_stream_config

    cfg = load_stream_config(path)
    assert cfg.output_dir.startswith("runs/") and cfg.deterministic


def test_distill_stream_command_runs_a_stream_file_and_refuses_a_bad_key(tmp_path, capsys):
    import yaml

    from distill.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_raw(LEARNERS["onpro"], tmp_path / "out")))
    assert main(["stream", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 2  # one line of metrics after each task
    assert main(["stream", str(path), "--set", "learner.options.buffer_sise=3"]) == 2
    assert "learner.options.buffer_sise" in capsys.readouterr().err


def test_what_only_the_data_can_refuse_is_a_config_error_before_training(data, tmp_path, capsys):
    """A class the dataset lacks, an empty task, an OnPro buffer sized for other images, an impossible dataset
    option: one ``config error`` line naming the key, nothing trained (before: a traceback after training, or a
    shape error inside the replay buffer)."""
    from distill.cli import main
    from distill.streams.runner import build_runner

    with pytest.raises(ValueError, match=r"^stream.tasks\[1\]: \[12\] is not a class of dataset 'digits' "
                                         r"\(its classes: 0..9\)"):
        class_incremental(data, [[0, 1], [2, 12]])
    with pytest.raises(ValueError, match=r"^stream.novel: \[10\] is not a class"):
        novel_class_stream(data, [0, 1], [2, 10])
    raw = _raw(LEARNERS["onpro"], tmp_path / "out")
    for change, message in [
        ({"stream": {"kind": "class_incremental", "tasks": [[0, 1], []]}}, r"stream.tasks\[1\]: no classes"),
        ({"stream": {"kind": "class_incremental", "tasks": [[0, 11]]}}, r"stream.tasks\[0\]: \[11\] is not a class"),
        ({"learner": {"name": "onpro", "options": {"image_size": 32}}},
         r"learner.options.image_size: 32 .* 'digits' are 8 x 8; set image_size: 8"),
        ({"stream": {**raw["stream"], "dataset_options": {"train_per_class": 900}}},
         r"stream.dataset_options.train_per_class: 900 is not in 1..\d+"),
        ({"learner": {"name": "crkd", "options": {"weighting": "equal"}}}, r"learner.options.weighting: Input should"),
        ({"learner": {"name": "dynamic_ykd", "options": {"average_weight": 2}}},
         r"learner.options.average_weight: Input should be less than or equal to 1"),  # before: after a whole run
        ({"learner": {"name": "proc_kd", "options": {"teacher": "missing.safetensors"}}},
         r"learner.options.teacher: missing.safetensors does not exist"),
    ]:
        with pytest.raises(ConfigError, match="^" + message):
            build_runner(parse_stream_config({**raw, **change}))
    path = tmp_path / "s.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**raw, "stream": {"kind": "class_incremental", "tasks": [[0, 1], [2, 12]]}}))
    assert main(["stream", str(path)]) == 2
    assert capsys.readouterr().err.startswith("config error: stream.tasks[1]: [12] is not a class")
    assert not (tmp_path / "out").exists()


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path, capsys):
    """A finished (or interrupted) run's folder resumed with another recipe used to continue silently (a rerun
    with more epochs printed the old run's metrics); it is refused, naming the setting, unless --restart. Settings
    that do not change what is trained (checkpoint_every, keep, eval_batch_size) may change."""
    import yaml

    from distill.cli import main

    path = tmp_path / "s.yaml"
    raw = _raw(LEARNERS["onpro"], tmp_path / "out")
    raw["stream"]["tasks"] = [[0, 1]]
    path.write_text(yaml.safe_dump(raw))
    assert main(["stream", str(path)]) == 0
    first = capsys.readouterr().out
    steps = latest_checkpoint(tmp_path / "out" / "checkpoints").name
    assert main(["stream", str(path), "--set", "train.checkpoint_every=3", "--set", "train.eval_batch_size=7"]) == 0
    assert capsys.readouterr().out == first  # the finished run, its metrics printed again
    assert main(["stream", str(path), "--set", "train.epochs_per_task=2"]) == 2
    err = capsys.readouterr().err
    assert "was written by a different run (train.epochs_per_task: 1 -> 2)" in err and "--restart" in err
    assert main(["stream", str(path), "--set", "learner.options.buffer_size=8"]) == 2
    assert "learner.options.buffer_size: 40 -> 8" in capsys.readouterr().err
    assert main(["stream", str(path), "--set", "train.epochs_per_task=2", "--restart"]) == 0
    assert capsys.readouterr().out.startswith('{"task": 0')
    assert int(latest_checkpoint(tmp_path / "out" / "checkpoints").name.split("-")[1]) == 2 * int(steps.split("-")[1])


def test_each_tasks_metrics_are_reported_as_soon_as_the_task_is_done(tmp_path):
    seen = []
    raw = _raw(LEARNERS["onpro"], tmp_path)
    on_task = lambda row: seen.append(  # noqa: E731
        (row["task"], len(json.loads((tmp_path / "metrics.json").read_text())["tasks"])))
    run_config(parse_stream_config(raw), on_task=on_task)
    assert seen == [(0, 1), (1, 2)]  # task 1's line comes when it is done, not with the others at the end
    seen.clear()
    run_config(parse_stream_config(raw), on_task=on_task)  # a finished run: its tasks again, nothing trained
    assert seen == [(0, 2), (1, 2)]


@pytest.mark.parametrize("path, command", [
    ("configs/continual/onpro_digits.yaml", "`distill stream FILE`"),
    ("configs/pipelines/tiny_pcoreset.yaml", "`distill pipeline FILE`"),
    ("configs/multi_teacher/meta_dmoe_cifar10_styles.yaml", "python benchmarks/SCRIPT.py --config FILE"),
])
def test_distill_train_on_a_stream_pipeline_or_benchmark_file_names_the_command_that_runs_it(path, command):
    """Before: `methods: required key is missing`, for a file that was never meant to have methods."""
    from distill.config import load_config

    with pytest.raises(ConfigError, match=r"^\(top level\): this .* not a training run") as e:
        load_config(ROOT / path)
    assert command in str(e.value)
