"""Files and faults (issue 23, part b): damaged checkpoints, pointers, cache files and weights are refused with one
line naming the file (a damaged checkpoint falls back to the newest intact one), a run folder has one owner (a
lock), and a non-finite loss, parameter or buffer stops the run naming it without checkpointing it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TinyCNN, demo_subset

from distill.cache import CacheError, CacheSettings, TeacherCache, build_teacher_cache, ensure_teacher_cache
from distill.core.compose import Composite
from distill.core.method import Method
from distill.core.safe_pickle import UnsafeFileError
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD
from distill.methods.logits import CrossEntropy
from distill.tasks.classification import ImageClassification
from distill.train import lock
from distill.train.checkpoint import (
    CHECKSUMS,
    LATEST,
    PARTS,
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from distill.train.module import DistillModule
from distill.train.trainer import NonFiniteError, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


# -- damage ------------------------------------------------------------------------------------------------------
def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def bit_flip(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[len(raw) * 3 // 4] ^= 0x08
    p.write_bytes(bytes(raw))


def zero_fill(p: Path) -> None:
    p.write_bytes(b"\0" * p.stat().st_size)


def delete(p: Path) -> None:
    p.unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {"truncated": truncate, "bit_flip": bit_flip, "zero_filled": zero_fill,
                                             "missing": delete}


def small_checkpoint(root: Path, step: int, keep: int = 3) -> Path:
    return save_checkpoint(root, step, {"w": torch.full((256,), float(step))}, {"m": torch.arange(3.0)},
                           {"state": {0: {"momentum_buffer": torch.ones(256)}}, "param_groups": [{"lr": 0.1}]},
                           {"position": {"global_step": step}, "rng": {}}, keep=keep)


class Warnings(list):
    def __call__(self, message: str) -> None:
        assert "\n" not in message
        self.append(message)


# -- checkpoints -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("part", [*PARTS, CHECKSUMS])
def test_damaged_checkpoint_falls_back_to_the_intact_older_one(tmp_path, part, damage):
    root = tmp_path / "checkpoints"
    small_checkpoint(root, 1)
    newest = small_checkpoint(root, 2)
    DAMAGE[damage](newest / part)
    warned = Warnings()
    folder, loaded = find_checkpoint(root, warn=warned)
    assert folder.name == "step-00000001"
    assert loaded["trainer"]["position"]["global_step"] == 1
    assert len(warned) == 1 and str(newest / part) in warned[0] and "falling back" in warned[0], warned
    # the only checkpoint damaged: one line naming the file, nothing half-loaded
    DAMAGE[damage](folder / part)
    with pytest.raises(CheckpointError) as info:
        find_checkpoint(root, warn=warned)
    assert str(folder / part) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\0" * 14, b"step-000", b"\xff\xfe garbage", b"step-00000009\n"])
def test_damaged_latest_pointer_is_named_and_the_newest_intact_checkpoint_used(tmp_path, content):
    root = tmp_path / "checkpoints"
    small_checkpoint(root, 1)
    small_checkpoint(root, 2)
    (root / LATEST).write_bytes(content)
    warned = Warnings()
    folder, _ = find_checkpoint(root, warn=warned)
    assert folder.name == "step-00000002"
    assert len(warned) == 1 and str(root / LATEST) in warned[0]


def test_a_step_checkpointed_twice_never_loses_the_folder_latest_names(tmp_path):
    """The bug: the second checkpoint of a step removed the first (named by latest) before moving in."""
    root = tmp_path / "checkpoints"
    small_checkpoint(root, 1, keep=2)
    first = small_checkpoint(root, 2, keep=2)
    second = small_checkpoint(root, 2, keep=2)
    assert first.name == "step-00000002" and second.name == "step-00000002-2"
    assert (root / LATEST).read_text().strip() == second.name
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [first.name, second.name]
    assert find_checkpoint(root)[0] == second
    assert small_checkpoint(root, 3, keep=2).name == "step-00000003"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [second.name, "step-00000003"]


def test_leftover_temporary_folders_are_used_when_complete_else_removed(tmp_path):
    root = tmp_path / "checkpoints"
    small_checkpoint(root, 1)
    complete = small_checkpoint(root, 2)
    incomplete = small_checkpoint(root, 3)
    complete.rename(root / ".tmp-step-00000002")  # killed between its last write and its rename
    (incomplete / CHECKSUMS).unlink()  # killed before its checksum list
    incomplete.rename(root / ".tmp-step-00000003")
    (root / LATEST).write_text("step-00000001\n")
    warned = Warnings()
    folder, _ = find_checkpoint(root, warn=warned)
    assert folder.name == "step-00000002" and not warned
    assert not list(root.glob(".tmp-*"))


def test_checkpoints_without_checksums_still_load(tmp_path):
    """Folders written before checksums existed are read (their readers still refuse damaged files)."""
    folder = small_checkpoint(tmp_path, 1)
    (folder / CHECKSUMS).unlink()
    trainer = torch.load(folder / "trainer.pt", weights_only=True)
    del trainer["checksummed"]  # what older code wrote
    torch.save(trainer, folder / "trainer.pt")
    assert set(load_checkpoint(folder)) == {"student", "methods", "optimizer", "trainer"}
    truncate(folder / "student.safetensors")
    with pytest.raises(UnsafeFileError, match="student.safetensors"):
        load_checkpoint(folder)


# -- lock --------------------------------------------------------------------------------------------------------
def test_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, capsys):
    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        info = {"pid": sleeper.pid, "host": socket.gethostname(), "start": lock._start_time(sleeper.pid)}
        (run / lock.LOCK).write_text(json.dumps(info))
        with pytest.raises(lock.RunLockedError) as e:
            lock.acquire(run)
        assert str(run.resolve()) in str(e.value) and f"pid {sleeper.pid}" in str(e.value)
    finally:
        sleeper.kill()
        sleeper.wait()
    with lock.RunLock(run):  # its process is gone: stale
        assert json.loads((run / lock.LOCK).read_text())["pid"] == os.getpid()
        with lock.RunLock(run):  # re-entrant in one process (the CLI and Trainer.fit)
            pass
        assert (run / lock.LOCK).exists()
    assert not (run / lock.LOCK).exists()
    assert "stale lock" in capsys.readouterr().err
    (run / lock.LOCK).write_bytes(b"\0\0\0")  # killed while writing it
    with lock.RunLock(run):
        pass
    (run / lock.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "start": None}))
    with pytest.raises(lock.RunLockedError, match="on host elsewhere.example"):
        lock.acquire(run)


# -- non-finite --------------------------------------------------------------------------------------------------
class Boom(Method):
    """A zero loss that becomes NaN at one step."""

    needs_teacher = False

    def __init__(self, at_step: int):
        super().__init__()
        self.at_step = at_step

    def forward(self, inputs):
        bad = float("nan") if inputs.step == self.at_step else 0.0
        return {"boom": inputs.student.logits.sum() * 0.0 + bad}


def tiny_run(tmp_path: Path, methods: Composite, **cfg: object) -> Trainer:
    torch.manual_seed(0)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, None)
    module = DistillModule(TinyCNN(), methods, None, task)
    config = TrainConfig(**{"epochs": 2, "batch_size": 10, "progress": False, "schedule": "constant", **cfg})
    return Trainer(module, demo_subset("train", 3), None, config, tmp_path)


def test_nan_loss_term_is_named_and_the_last_good_checkpoint_stays(tmp_path):
    trainer = tiny_run(tmp_path, Composite({"ce": CrossEntropy(), "boom": Boom(at_step=4)}), checkpoint_every=1)
    with pytest.raises(NonFiniteError, match=r"^non-finite loss term 'boom' \(nan\) at step 5 \(epoch 2\)"):
        trainer.fit()
    root = tmp_path / "checkpoints"
    folder, loaded = find_checkpoint(root)
    assert (root / LATEST).read_text().strip() == folder.name == "step-00000004"
    assert all(torch.isfinite(t).all() for t in loaded["student"].values())
    assert not (tmp_path / "student.safetensors").exists()
    assert not (tmp_path / lock.LOCK).exists()  # released on the way out


def test_the_non_finite_line_says_when_no_checkpoint_was_written(tmp_path):
    """A stop at the first step has no last good checkpoint to keep: ``distill train`` says so instead."""
    from distill.cli import non_finite_message

    first = tiny_run(tmp_path / "first", Composite({"ce": CrossEntropy(), "boom": Boom(at_step=0)}), checkpoint_every=1)
    with pytest.raises(NonFiniteError) as caught:
        first.fit()
    assert not list((tmp_path / "first").glob("checkpoints/step-*"))
    line = non_finite_message(caught.value, tmp_path / "first")
    assert "no checkpoint was written yet" in line and "last good checkpoint" not in line
    later = tiny_run(tmp_path / "later", Composite({"ce": CrossEntropy(), "boom": Boom(at_step=4)}), checkpoint_every=1)
    with pytest.raises(NonFiniteError) as caught:
        later.fit()
    line = non_finite_message(caught.value, tmp_path / "later")
    assert "the last good checkpoint is kept" in line and "no checkpoint" not in line


def test_exploding_batchnorm_statistics_stop_the_run(tmp_path):
    """AdamW at lr 1e6 used to finish with exit 0 and infinite BatchNorm statistics."""
    trainer = tiny_run(tmp_path, Composite({"ce": CrossEntropy()}), optimizer="adamw", lr=1e20, weight_decay=0.0,
                       checkpoint_every=1, epochs=3)
    with pytest.raises(NonFiniteError, match=r"^non-finite (loss term|parameter|buffer) .* at step \d+ \(epoch \d\)"):
        trainer.fit()
    for folder in sorted(tmp_path.glob("checkpoints/step-*")):
        loaded = load_checkpoint(folder)
        assert all(torch.isfinite(t).all() for t in loaded["student"].values() if t.is_floating_point())


# -- teacher cache -----------------------------------------------------------------------------------------------
def cache_parts():
    torch.manual_seed(0)
    teacher = TinyCNN(16).eval()
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, None)
    return teacher, task, demo_subset("train", 2)


@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "zero_filled", "missing"])
def test_damaged_cache_manifest_is_refused_naming_it(tmp_path, damage):
    teacher, task, data = cache_parts()
    build_teacher_cache(tmp_path / "c", teacher, task, data, CacheSettings(), batch_size=8, shard_size=8)
    manifest = tmp_path / "c" / "manifest.json"
    DAMAGE[damage](manifest)
    with pytest.raises(CacheError) as e:
        TeacherCache(tmp_path / "c")
    assert str(tmp_path / "c") in str(e.value) and "\n" not in str(e.value)
    if damage != "missing":
        assert str(manifest) in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "zero_filled", "missing"])
def test_damaged_cache_shard_is_refused_naming_it(tmp_path, damage):
    teacher, task, data = cache_parts()
    build_teacher_cache(tmp_path / "c", teacher, task, data, CacheSettings(), batch_size=8, shard_size=8)
    shard = sorted((tmp_path / "c").glob("shard-*.npy"))[1]
    DAMAGE[damage](shard)
    with pytest.raises(CacheError, match=str(shard).replace(".", r"\.")):
        TeacherCache(tmp_path / "c")


KILLED_BUILD = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from helpers import TinyCNN, demo_subset
from distill.cache import CacheSettings, build_teacher_cache
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD
from distill.tasks.classification import ImageClassification
torch.manual_seed(0)
teacher = TinyCNN(16).eval()
calls = []
def slow(module, args, out):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # the build is killed half way
teacher.register_forward_hook(slow)
build_teacher_cache({path!r}, teacher, ImageClassification(IMAGENET_MEAN, IMAGENET_STD, None),
                    demo_subset("train", 2), CacheSettings(), batch_size=8, shard_size=8, checkpoint_seconds=0)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_cache_build_killed_half_way_is_refused_then_resumed(tmp_path):
    teacher, task, data = cache_parts()
    clean = build_teacher_cache(tmp_path / "clean", teacher, task, data, CacheSettings(), batch_size=8, shard_size=8)
    path = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD.format(tests=str(REPO / "tests"), path=str(path))],
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert list(path.glob("shard-*.npy")) and not (path / "manifest.json").exists()
    with pytest.raises(CacheError, match=f"{path}: no manifest.json; .*did not finish"):
        ensure_teacher_cache(path, teacher, task, data, CacheSettings(), build="never")
    calls = []
    teacher.register_forward_hook(lambda m, a, o: calls.append(1))
    cache = ensure_teacher_cache(path, teacher, task, data, CacheSettings(), build="if_missing", batch_size=8,
                                 shard_size=8)
    assert len(calls) == 2  # 3 batches; the first was recorded before the SIGKILL
    rebuilt = cache.store.manifest
    assert [s["files"] for s in rebuilt["shards"]] == [s["files"] for s in clean["shards"]]


# -- teacher weights ---------------------------------------------------------------------------------------------
def test_teacher_weights_damage_is_refused_naming_the_file(tmp_path):
    from distill.models.weights import read_state_dict
    from distill.train.checkpoint import save_weights

    weights = tmp_path / "teacher.safetensors"
    for damage in (truncate, zero_fill):
        save_weights(weights, TinyCNN().state_dict())
        damage(weights)
        with pytest.raises(UnsafeFileError, match=str(weights)):
            read_state_dict(weights)
    save_weights(weights, TinyCNN().state_dict())
    import hashlib

    (tmp_path / "teacher.safetensors.sha256").write_text(
        f"{hashlib.sha256(weights.read_bytes()).hexdigest()}  teacher.safetensors\n")
    read_state_dict(weights)
    bit_flip(weights)  # a flip in the tensor data: only the sidecar checksum can tell
    with pytest.raises(UnsafeFileError, match="checksum mismatch"):
        read_state_dict(weights)
    (tmp_path / "teacher.safetensors.sha256").write_text("nonsense")
    with pytest.raises(UnsafeFileError, match=r"teacher\.safetensors\.sha256: unreadable"):
        read_state_dict(weights)


def test_shipped_teacher_matches_its_checksum():
    from distill.models.weights import read_state_dict

    assets = REPO / "src" / "distill" / "assets"
    assert (assets / "resnet56_cifar10_jpeg.safetensors.sha256").is_file()
    assert read_state_dict(assets / "resnet56_cifar10_jpeg.safetensors")


# -- the command line --------------------------------------------------------------------------------------------
def cli_config(path: Path, out: Path, **train: object) -> Path:
    raw = {"output_dir": str(out), "seed": 1,
           "data": {"train": DEMO, "train_per_class": 2},
           "student": {"arch": "resnet20"}, "methods": [{"name": "ce"}],
           "train": {"epochs": 2, "batch_size": 5, "progress": False, "checkpoint_every": 1, **train}}
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(cfg: Path, wait: bool = True) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "distill", "train", str(cfg)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_cli_damaged_latest_checkpoint_falls_back_then_refuses(tmp_path):
    out = tmp_path / "run"
    cfg = cli_config(tmp_path / "c.yaml", out, max_steps=2)
    assert cli(cfg).returncode == 0
    root = out / "checkpoints"
    assert (root / LATEST).read_text().strip() == "step-00000002"
    bit_flip(root / "step-00000002" / "student.safetensors")
    cfg = cli_config(tmp_path / "c.yaml", out, max_steps=3)
    proc = cli(cfg)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and str(root / "step-00000002" / "student.safetensors") in warning[0]
    assert "checksum mismatch" in warning[0] and "falling back" in warning[0]
    assert (root / LATEST).read_text().strip() == "step-00000003"
    for folder in root.glob("step-*"):
        zero_fill(folder / "optimizer.pt")
    proc = cli(cli_config(tmp_path / "c.yaml", out, max_steps=4))
    line = error_line(proc.__class__(proc.args, proc.returncode, proc.stdout,
                                     "\n".join(x for x in proc.stderr.splitlines() if not x.startswith("warning"))))
    assert "optimizer.pt" in line and "no intact checkpoint" in line


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_cli_second_run_on_a_folder_is_refused_and_a_killed_run_resumes(tmp_path):
    out = tmp_path / "run"
    cfg = cli_config(tmp_path / "a.yaml", out, step_delay=3.0)  # still running when the second run starts
    first = cli(cfg, wait=False)
    deadline = time.time() + 240
    while not (out / "checkpoints" / LATEST).exists():
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    config_before = (out / "distill_config.json").read_text()
    other = cli_config(tmp_path / "b.yaml", out, step_delay=0.0, epochs=3)
    line = error_line(cli(other))
    assert str(out.resolve()) in line and f"pid {first.pid}" in line
    assert (out / "distill_config.json").read_text() == config_before  # the refused run changed nothing
    first.kill()
    first.communicate()
    assert (out / lock.LOCK).exists()  # left by the killed run
    proc = cli(cli_config(tmp_path / "a.yaml", out))
    assert proc.returncode == 0, proc.stderr
    assert "taking over a stale lock" in proc.stderr
    assert not (out / lock.LOCK).exists()
    assert (out / "student.safetensors").exists()


def test_cli_nan_loss_stops_with_the_step_and_term_named(tmp_path):
    out = tmp_path / "run"
    """AdamW at a huge learning rate: BatchNorm statistics overflow (lr 1e6 took longer runs to get there)."""
    proc = cli(cli_config(tmp_path / "c.yaml", out, optimizer="adamw", lr=1e12, weight_decay=0.0, epochs=4))
    line = error_line(proc)
    assert re.search(r"non-finite (loss term|parameter|buffer) '[\w.]+'.* at step \d+ \(epoch \d+\)", line), line
    root = out / "checkpoints"
    if (root / LATEST).exists():  # the last good checkpoint is intact and finite
        folder, loaded = find_checkpoint(root)
        assert folder.name == (root / LATEST).read_text().strip()
        assert all(torch.isfinite(t).all() for t in loaded["student"].values() if t.is_floating_point())
    assert not (out / "student.safetensors").exists()


def test_starting_over_removes_the_old_runs_checkpoints(tmp_path):
    """Otherwise a fallback (or name order) could resume the old run's newer checkpoint."""
    tiny_run(tmp_path, Composite({"ce": CrossEntropy()}), checkpoint_every=1).fit()
    assert (tmp_path / "checkpoints" / "step-00000006-2").is_dir()
    tiny_run(tmp_path, Composite({"ce": CrossEntropy()}), checkpoint_every=1, max_steps=2).fit(resume=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000001", "step-00000002"]


def test_metric_log_cut_by_a_kill_or_damaged_rewinds_cleanly(tmp_path):
    from distill.train.logs import FIELDS, MetricLog, read_metrics

    (tmp_path / "metrics.csv").write_bytes(b"step,epoch,split,metric,value\n1,0,train,loss,2.5\n\xff\x00garbage\n"
                                           b"2,0,train,loss,2.4\n3,0,train,lo")
    log = MetricLog(tmp_path, resume_step=2, tensorboard=False)
    log.log(3, 0, "train", {"loss": 2.3})
    log.close()
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["value"]) for r in rows] == [("1", "2.5"), ("2", "2.4"), ("3", "2.3")]
    assert list(rows[0]) == FIELDS
