"""benchmarks/catalogue_queue.sh: every listed job runs once across workers, a live claim is left alone, a dead
claimant's job is taken over, a finished one is skipped (the runner is a stub that records its arguments)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "catalogue_queue.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_queue(tmp_path: Path, jobs: str, workers: int = 2) -> list[str]:
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / "catalogue_queue.sh")
    (tmp_path / "jobs.txt").write_text(jobs)
    stub = tmp_path / "stub.py"
    stub.write_text(f"#!{sys.executable}\nimport sys\nwith open('calls.txt', 'a') as f:\n"
                    "    f.write(' '.join(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "JOBS": str(tmp_path / "jobs.txt"),
           "WORKERS": str(workers), "STAGGER": "1"}
    subprocess.run(["bash", str(tmp_path / "benchmarks" / "catalogue_queue.sh")], env=env, check=True, timeout=120)
    calls = tmp_path / "calls.txt"
    return calls.read_text().splitlines() if calls.exists() else []


def test_each_job_runs_once_with_its_table_and_probe(tmp_path):
    calls = run_queue(tmp_path, "# a comment\nresnet20 sp 1\n\nmobilenetv2 kd 2\nresnet20 cc 1\n")
    assert len(calls) == 3
    by_arm = {c.split("--only ")[1].split()[0]: c for c in calls}
    assert set(by_arm) == {"sp", "kd", "cc"}
    assert "--seeds 2 --student mobilenetv2" in by_arm["kd"] and "--name cifar10_catalogue_mobilenetv2" in by_arm["kd"]
    assert "--name cifar10_catalogue " in by_arm["sp"] and all("--probe-name catalogue" in c for c in calls)
    claims = tmp_path / "benchmarks" / "work" / "catalogue_claims"
    assert all((claims / j / "done").exists() for j in ("resnet20-sp-seed1", "mobilenetv2-kd-seed2"))


def test_claims_live_dead_and_done(tmp_path):
    claims = tmp_path / "benchmarks" / "work" / "catalogue_claims"
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        for job, pid, done in (("resnet20-sp-seed1", live.pid, False), ("resnet20-cc-seed1", dead.pid, False),
                               ("resnet20-vid-seed1", dead.pid, True)):
            (claims / job).mkdir(parents=True)
            (claims / job / "pid").write_text(f"{pid}\n")
            if done:
                (claims / job / "done").touch()
        calls = run_queue(tmp_path, "resnet20 sp 1\nresnet20 cc 1\nresnet20 vid 1\n", workers=1)
    finally:
        live.kill()
    assert [c.split("--only ")[1].split()[0] for c in calls] == ["cc"]  # taken over; sp is held, vid is finished
