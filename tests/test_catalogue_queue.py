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


def run_queue(tmp_path: Path, jobs: str, workers: int = 2, then: str = "") -> list[str]:
    """Run the queue over ``jobs`` with a stub runner; ``then``: a line the first call appends to the list."""
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / "catalogue_queue.sh")
    (tmp_path / "jobs.txt").write_text(jobs)
    stub = tmp_path / "stub.py"
    stub.write_text(f"#!{sys.executable}\nimport sys\nfrom pathlib import Path\n"
                    "calls = Path('calls.txt')\n"
                    f"if {then!r} and not calls.exists():\n"
                    f"    with open({str(tmp_path / 'jobs.txt')!r}, 'a') as f:\n"
                    f"        f.write({then!r} + '\\n')\n"
                    "with open(calls, 'a') as f:\n"
                    "    f.write(' '.join(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "JOBS": str(tmp_path / "jobs.txt"),
           "WORKERS": str(workers), "STAGGER": "1"}
    subprocess.run(["bash", str(tmp_path / "benchmarks" / "catalogue_queue.sh")], env=env, check=True, timeout=120)
    calls = tmp_path / "calls.txt"
    return calls.read_text().splitlines() if calls.exists() else []


def runs_of(calls: list[str]) -> list[str]:
    """The benchmark runs among the stub's calls (the others: verdicts.py --extend-jobs after each finished run)."""
    return [c for c in calls if c.startswith("benchmarks/cifar10_kd.py")]


def test_each_job_runs_once_with_its_table_and_probe(tmp_path):
    everything = run_queue(tmp_path, "# a comment\nresnet20 sp 1\n\nmobilenetv2 kd 2\nresnet20 cc 1\n")
    calls = runs_of(everything)
    assert len(calls) == 3
    extend = [c for c in everything if c.startswith("benchmarks/verdicts.py --extend-jobs")]
    assert len(extend) == 3 and all(c.endswith("jobs.txt") for c in extend)  # after each finished run
    by_arm = {c.split("--only ")[1].split()[0]: c for c in calls}
    assert set(by_arm) == {"sp", "kd", "cc"}
    assert "--seeds 2 --student mobilenetv2" in by_arm["kd"] and "--name cifar10_catalogue_mobilenetv2" in by_arm["kd"]
    assert by_arm["sp"].split("--name ")[1].split()[0] == "cifar10_catalogue"
    assert all("--probe-name catalogue" in c for c in calls)
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
        calls = runs_of(run_queue(tmp_path, "resnet20 sp 1\nresnet20 cc 1\nresnet20 vid 1\n", workers=1))
    finally:
        live.kill()
    assert [c.split("--only ")[1].split()[0] for c in calls] == ["cc"]  # taken over; sp is held, vid is finished


def test_protocol_groups_get_their_recipes_and_teacher(tmp_path):
    calls = runs_of(run_queue(tmp_path, "tgeo kd_alpha05 1\nmixt mixup_mixt 0\nmealv2 mealv2_finetune 1\n"))
    by_arm = {c.split("--only ")[1].split()[0]: c for c in calls}
    assert "--configs configs/cifar10_tgeo" in by_arm["kd_alpha05"]
    assert "--name cifar10_tgeo" in by_arm["kd_alpha05"] and "--seeds 1" in by_arm["kd_alpha05"]
    assert "--teacher-mixup" in by_arm["mixup_mixt"] and "--teacher " not in by_arm["mixup_mixt"]
    assert "--name cifar10_mealv2" in by_arm["mealv2_finetune"]
    assert not any("--probe-name" in c or "--student" in c for c in calls)  # protocol tables: their recipes' student


def test_a_job_listed_while_the_queue_runs_is_taken(tmp_path):
    calls = runs_of(run_queue(tmp_path, "resnet20 kd 0\n", workers=1, then="resnet20 dkd 1"))
    assert [c.split("--only ")[1].split()[0] for c in calls] == ["kd", "dkd"]


def test_every_listed_job_names_a_recipe():
    folders = {"resnet20": "cifar10", "mobilenetv2": "cifar10_mobilenetv2", "tgeo": "cifar10_tgeo",
               "mixt": "cifar10_mixt", "mealv2": "cifar10_mealv2"}
    lines = [line.split() for line in (REPO / "benchmarks" / "catalogue_jobs.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines
    for group, arm, seed in lines:
        assert (REPO / "configs" / folders[group] / f"{arm}.yaml").exists(), (group, arm)
        assert int(seed) >= 0
