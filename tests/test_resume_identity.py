"""Resuming checks the experiment's identity (method options, student, teacher, data) besides the training
settings; a checkpoint whose tensors do not fit the run's model is a one-line refusal, not a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from distill.config import parse_config
from distill.experiment import build_experiment, run_identity
from distill.train.checkpoint import _write_checksums, latest_checkpoint
from distill.train.trainer import ResumeMismatchError

BASE = """
task: vector_classification
seed: 1
deterministic: true
data: {{train: train.npz, eval: test.npz}}
student: {{arch: mlp, options: {{hidden: {student_hidden}}}}}
teacher: {{arch: mlp, weights: random{teacher}}}
methods: [{{name: ce}}, {{name: kd{kd}}}]
train: {{epochs: 2, batch_size: 8, lr: 0.05, checkpoint_every: 3, log_every: 1, progress: {progress}{extra}}}
"""


def cfg(tmp_path, *, student_hidden=16, teacher="", kd="", progress="false", extra=""):
    text = BASE.format(student_hidden=student_hidden, teacher=teacher, kd=kd, progress=progress, extra=extra)
    return parse_config(yaml.safe_load(text), base_dir=tmp_path)


@pytest.fixture
def data(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:10], y=y[:10])
    return tmp_path


def interrupted(tmp_path, **kw):
    """A run stopped after step 3 (its checkpoint is the newest), as a killed one leaves it."""
    build_experiment(cfg(tmp_path, extra=", max_steps: 3", **kw), tmp_path / "run").fit()
    return tmp_path / "run"


def test_changed_method_option_is_refused_naming_it(data):
    run = interrupted(data)
    with pytest.raises(ResumeMismatchError, match=r"different run \(methods\[1\]\.temperature: - -> 8\)"):
        build_experiment(cfg(data, kd=", temperature: 8"), run).fit()
    # the option given at its default is the same run
    assert run_identity(cfg(data, kd=", temperature: 4.0")) == run_identity(cfg(data))
    assert run_identity(cfg(data, kd=", temperature: 4")) == run_identity(cfg(data))  # an int for a float


def test_changed_teacher_options_are_refused(data):
    run = interrupted(data)
    with pytest.raises(ResumeMismatchError, match=r"different run \(teacher\.options\.hidden: - -> 64\)"):
        build_experiment(cfg(data, teacher=", options: {hidden: 64}"), run).fit()


def test_teacher_weights_file_contents_are_part_of_the_identity(data):
    (data / "w.bin").write_bytes(b"a" * 10)
    before = run_identity(cfg(data, teacher=", path: w.bin"))
    (data / "w.bin").write_bytes(b"b" * 10)
    after = run_identity(cfg(data, teacher=", path: w.bin"))
    assert before["teacher.path"] == after["teacher.path"] and before["teacher.path#file"] != after["teacher.path#file"]


def test_changed_student_is_one_line_even_without_the_recipe_check(data, capsys):
    run = interrupted(data)
    with pytest.raises(ResumeMismatchError, match=r"student\.options\.hidden: 16 -> 32"):
        build_experiment(cfg(data, student_hidden=32), run).fit()
    # an old-style checkpoint (written before the identity keys): the shapes still refuse it in one line
    folder = latest_checkpoint(run / "checkpoints")
    state = torch.load(folder / "trainer.pt", weights_only=False)
    recipe = state["recipe"]
    state["recipe"] = {k: v for k, v in recipe.items()
                       if not (k == "identity" or k.startswith(("methods[", "student.", "teacher.", "data.")))}
    assert len(state["recipe"]) < len(recipe)
    torch.save(state, folder / "trainer.pt")
    _write_checksums(folder)
    with pytest.raises(ResumeMismatchError) as e:
        build_experiment(cfg(data, student_hidden=32), run).fit()
    msg = str(e.value)
    assert "\n" not in msg and "size mismatch" not in msg
    assert "student." in msg and "[16, 6]" in msg and "[32, 6]" in msg, msg
    # and the unchanged run still resumes from that old-style checkpoint
    build_experiment(cfg(data), run).fit()


def test_unchanged_or_progress_changed_rerun_resumes_bit_identically(data):
    full = data / "full"
    build_experiment(cfg(data), full).fit()
    run = interrupted(data)
    build_experiment(cfg(data, progress="true", extra=", log_every: 2, progress_every: 7"), run).fit()
    a, b = load_file(str(full / "student.safetensors")), load_file(str(run / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wall_time_adds_up_over_resumes(data, monkeypatch):
    """summary.json's wall time is the training time of every session (a no-op resume of a finished run keeps it),
    carried in the checkpoints."""
    run = interrupted(data)
    first = latest_checkpoint(run / "checkpoints")
    from distill.train.checkpoint import load_checkpoint

    before = load_checkpoint(first)["trainer"]["position"]["wall_s"]
    assert before > 0
    summary = build_experiment(cfg(data), run).fit()
    assert summary["wall_time_s"] > before
    newest = load_checkpoint(latest_checkpoint(run / "checkpoints"))["trainer"]["position"]["wall_s"]
    again = build_experiment(cfg(data), run).fit()  # resumes from the newest checkpoint: little left to train
    assert again["steps"] == summary["steps"] and again["wall_time_s"] > newest >= before


def test_changed_data_file_is_refused_naming_it(data):
    run = interrupted(data)
    x = np.load(data / "train.npz")
    np.savez(data / "train.npz", x=x["x"] * 2, y=x["y"])  # same name, other contents
    with pytest.raises(ResumeMismatchError, match=r"data\.train#file"):
        build_experiment(cfg(data), run).fit()


def test_checkpoint_without_file_identities_still_resumes(data):
    """A checkpoint written before data files were part of the identity (no ``#file`` keys) is not refused."""
    run = interrupted(data)
    folder = latest_checkpoint(run / "checkpoints")
    state = torch.load(folder / "trainer.pt", weights_only=False)
    state["recipe"] = {k: v for k, v in state["recipe"].items() if not k.endswith("#file")}
    torch.save(state, folder / "trainer.pt")
    _write_checksums(folder)
    assert build_experiment(cfg(data), run).fit()["steps"] > 3
