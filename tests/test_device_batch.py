"""The GPU batch's plan (the catalogue runs still missing, in order) and the merge of what a batch returns."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def load():
    return load_benchmark("device_batch")


def table(runs, epochs=15):
    return {"args": {"epochs": epochs, "per_class": 500, "student": "resnet20"},
            "runs": [{"arm": a, "seed": s, "accuracy": 0.5} for a, s in runs]}


def test_plan_lists_missing_runs_in_priority_order(tmp_path):
    bench = load()
    (tmp_path / "cifar10_catalogue.json").write_text(json.dumps(table([("scratch", 1), ("scratch", 2), ("kd", 1)])))
    jobs = bench.plan(tmp_path)
    r20 = [(a, s) for student, a, s in jobs if student == "resnet20"]
    assert ("scratch", 1) not in r20 and ("kd", 1) not in r20 and r20[0] == ("kd", 2)
    assert ("fitnet", 1) in r20 and ("fitnet", 0) not in r20  # seed 0 of the catalogue is not rerun
    assert ("dho_single_head", 0) in r20 and ("fsp", 1) in r20  # control arms: every seed
    assert "tgeo" not in {a for a, _ in r20}  # judged in its protocol table, not the catalogue's
    tgeo = [(a, s) for g, a, s in jobs if g == "tgeo"]
    assert ("kd_alpha05", 2) in tgeo and ("tgeo", 0) in tgeo and ("scratch", 0) in tgeo
    mobile = {a for student, a, _ in jobs if student == "mobilenetv2"}
    assert "fsp" not in mobile and "scratch" in mobile  # the pair's own recipes, seeds 1-2


def test_job_probes_only_the_arms_a_verdict_reads():
    bench = load()
    args = SimpleNamespace(work=Path("/w"), results=Path("/r"), shared=Path("/s"), epochs=15, per_class=500)
    fitnet = bench.job_command(args, "mobilenetv2", "fitnet", 1)
    assert "--only fitnet --seeds 1" in fitnet and "--student mobilenetv2" in fitnet
    assert "--probe-name catalogue" in fitnet and "--out /r" in fitnet
    assert "--probe-name" not in bench.job_command(args, "resnet20", "dkd", 2)
    assert "--probe-name" not in bench.job_command(args, "tgeo", "scratch", 0)  # protocol tables: no probes
    mixt = bench.job_command(args, "mixt", "mixup_t1_mixt", 2)  # trains its own teacher (once, under a lock)
    assert "--teacher-mixup" in mixt and "--teacher " not in mixt


def test_merge_adds_new_records_keeps_local_ones_and_refuses_other_schedules(tmp_path):
    bench = load()
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    (here / "cifar10_catalogue.json").write_text(json.dumps(table([("kd", 0)])))
    theirs = table([("kd", 0), ("kd", 1)])
    theirs["runs"][0]["accuracy"] = 0.9  # the device's own seed 0 does not replace the local one
    (there / "cifar10_catalogue.json").write_text(json.dumps(theirs))
    probes = {"images": 1000, "data": "x", "init": {"resnet20/seed1": {}}, "runs": [{"run_dir": "a"}]}
    (there / "probes_catalogue.json").write_text(json.dumps(probes))
    assert bench.merge(there, here) == ["cifar10_catalogue: kd seed 1", "probes_catalogue: a"]
    merged = json.loads((here / "cifar10_catalogue.json").read_text())["runs"]
    assert [(r["arm"], r["seed"], r["accuracy"]) for r in merged] == [("kd", 0, 0.5), ("kd", 1, 0.5)]
    assert bench.merge(there, here) == []  # again: nothing new
    (there / "cifar10_catalogue.json").write_text(json.dumps(table([("kd", 2)], epochs=1)))
    with pytest.raises(SystemExit, match="epochs"):
        bench.merge(there, here)


def test_merge_starts_a_table_the_batch_made_and_plans_meal_v2s_protocol(tmp_path):
    bench = load()
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    smoke = table([("mealv2_finetune", 0)], epochs=1)
    (there / "cifar10_mealv2.json").write_text(json.dumps(smoke))
    with pytest.raises(SystemExit, match="not merged"):  # a smoke batch's table is never taken
        bench.merge(there, here)
    full = table([("mealv2_finetune", 0)], epochs=10)
    full["args"]["per_class"] = 5000
    (there / "cifar10_mealv2.json").write_text(json.dumps(full))
    assert bench.merge(there, here) == ["cifar10_mealv2: mealv2_finetune seed 0"]
    jobs = [(a, s) for g, a, s in bench.plan(here) if g == "mealv2"]
    assert ("mealv2_finetune", 0) not in jobs and ("mealv2_finetune", 1) in jobs
    assert ("ce_finetune_pretrained", 0) in jobs
    args = SimpleNamespace(work=Path("/w"), results=Path("/r"), shared=Path("/s"), epochs=None, per_class=None)
    cmd = bench.job_command(args, "mealv2", "mealv2_finetune", 1)
    assert cmd.endswith("--name cifar10_mealv2 --configs configs/cifar10_mealv2") and "--epochs" not in cmd
