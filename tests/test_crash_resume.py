"""A training process killed with SIGKILL (between checkpoints, or while writing one) resumes from its last
checkpoint to the same final weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def write_config(path: Path, out: Path, step_delay: float) -> Path:
    raw = {
        "output_dir": str(out),
        "seed": 3,
        "deterministic": True,
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 8, "eval_per_class": 2},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet20", "weights": "random"},
        "methods": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9},
                    {"name": "fitnet", "weight": 10, "student": "f2", "teacher": "f2"}],
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "schedule": "cosine", "checkpoint_every": 2,
                  "progress": False, "step_delay": step_delay, "log_every": 1},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def train_cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "distill.cli", "train", str(cfg)]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"  # the same thread count in every process keeps CPU kernels bit-identical
    e.pop("DISTILL_TEST_CHECKPOINT_KILL", None)
    e.update(extra)
    return e


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """The uninterrupted run's folder."""
    tmp = tmp_path_factory.mktemp("full")
    subprocess.run(train_cmd(write_config(tmp / "full.yaml", tmp / "run", 0.0)), check=True, env=env(),
                   capture_output=True)
    return tmp / "run"


def assert_same_weights(full: Path, crash: Path) -> None:
    a = load_file(str(full / "student.safetensors"))
    b = load_file(str(crash / "student.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("point", ["before_checksums", "before_rename", "before_pointer"])
def test_sigkill_while_writing_a_checkpoint_then_resume_matches_uninterrupted(tmp_path, full, point):
    """Killed while writing the second checkpoint of step 10 (a checkpoint_every step that also ends epoch 2: the
    case where the old code had removed the folder ``latest`` named before moving the new one in)."""
    crash = tmp_path / "crash"
    cfg = write_config(tmp_path / "crash.yaml", crash, 0.0)
    proc = subprocess.run(train_cmd(cfg), env=env(DISTILL_TEST_CHECKPOINT_KILL=f"{point}:step-00000010-2"),
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    root = crash / "checkpoints"
    assert (root / "step-00000010").is_dir()  # what latest names is never touched
    assert (root / "latest").read_text().strip() == "step-00000010"
    resumed = subprocess.run(train_cmd(cfg), env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "warning" not in resumed.stderr and "Traceback" not in resumed.stderr
    assert not list(root.glob(".tmp-*"))
    assert_same_weights(full, crash)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, full):

    crash = tmp_path / "crash"
    cfg = write_config(tmp_path / "crash.yaml", crash, 0.3)
    proc = subprocess.Popen(train_cmd(cfg), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = crash / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline:
        if pointer.exists() and int(pointer.read_text().strip().split("-")[1]) >= 6:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no checkpoint appeared in time")
    time.sleep(0.4)  # land somewhere between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (crash / "student.safetensors").exists()

    subprocess.run(train_cmd(cfg), check=True, env=env(), capture_output=True)
    assert_same_weights(full, crash)
