"""benchmarks/tinyshakespeare_1m.py's own logic: the recipes parse with the budget they claim, TAID's t curve is
summarised against its linear floor, a claim of a dead process is taken over, the top-64 store's cost is the paired
% difference, and the verdicts read the multi-seed results (and still the one-seed 48-step ones)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import tinyshakespeare_1m as T  # noqa: E402
import verdicts as V  # noqa: E402


def test_every_arm_has_a_recipe_with_at_least_a_million_training_tokens():
    from sweep import discover_arms, load_recipe

    arms = discover_arms(T.CONFIGS, T.ARMS)
    assert list(arms) == T.ARMS
    train_blocks = 2398  # tinyshakespeare in SmolLM2 tokens: 2,664 blocks of 128, the last 266 held out
    forms = {}
    for arm, path in arms.items():
        raw, cfg = load_recipe(path, [])
        steps = (train_blocks // cfg.train.batch_size) * cfg.train.epochs
        assert cfg.train.max_steps is None and steps * cfg.train.batch_size * cfg.data.block_size >= 1_000_000, arm
        if cfg.teacher is not None:
            forms[arm] = T.store_form(cfg.teacher.cache)
    assert forms["fkl_dense"] == "hidden" and forms["fkl"] == forms["taid"] == "k64" and forms["fkl_k1"] == "k1"
    assert forms["fkl_k256"] == "k256" and forms["fkl_zero"] == "k64"
    assert forms["fkl_hidden16"] == "hidden_float16"  # its own store folder, not the float32 one's
    assert set(T.STORE_ARMS) <= set(T.ARMS)
    _, zero = load_recipe(arms["fkl_zero"], [])
    assert zero.methods[0].options()["missing"] == "zero"
    _, no_adapt = load_recipe(arms["taid_no_adaptive"], [])
    assert no_adapt.methods[0].options()["disable_adaptive"] is True


def test_t_summary_measures_the_lead_over_the_linear_floor():
    floor = [0.4 + 0.6 * s / 10 for s in range(10)]
    on_floor = [[s / 10, f, f] for s, f in enumerate(floor)]
    out = T.t_summary(on_floor, points=4)
    assert out["t_first"] == 0.4 and out["t_last"] == floor[-1] and out["t_steps_above_floor"] == 0
    assert out["t_max_above_floor"] == 0 and out["t_curve"][-1] == on_floor[-1] and len(out["t_curve"]) <= 6
    ahead = [[p, f, f + (0.05 if 3 <= i <= 5 else 0.0)] for i, (p, f, _) in enumerate(on_floor)]
    out = T.t_summary(ahead)
    assert out["t_steps_above_floor"] == 3 and out["t_max_above_floor"] == pytest.approx(0.05)


def test_a_claim_is_exclusive_and_a_dead_process_claim_is_taken_over(tmp_path):
    held = T.claim(tmp_path, "fkl", 0)
    assert held is not None and held.read_text() == str(os.getpid())
    assert T.claim(tmp_path, "fkl", 0) is None  # this (live) process holds it
    held.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "fkl-s1").write_text(dead.stdout.strip())
    again = T.claim(tmp_path, "fkl", 1)
    assert again is not None and again.read_text() == str(os.getpid())


def _runs(values: dict[str, list[float]], **extra) -> dict:
    runs = [{"arm": a, "seed": s, "val_perplexity": v, **extra.get(a, {})} for a, vs in values.items()
            for s, v in enumerate(vs)]
    return {"args": {}, "runs": runs}


def test_store_cost_is_the_paired_percent_difference():
    data = _runs({"fkl": [102.0, 101.0, 103.0], "fkl_dense": [100.0, 100.0, 100.0]})
    cost = T.store_cost(data["runs"])
    assert cost["percent_per_seed"] == {0: 2.0, 1: 1.0, 2: 3.0} and cost["mean_percent"] == pytest.approx(2.0)
    lo, hi = cost["ci95_percent"]
    assert lo < 2.0 < hi and cost["seeds"] == 3


def test_verdicts_read_seeds_the_t_curve_and_the_no_adaptive_control():
    curve = [[i / 4, 0.4 + 0.15 * i, 0.4 + 0.15 * i] for i in range(5)]
    data = _runs({"ce": [300.0, 310.0, 305.0], "fkl": [200.0, 202.0, 201.0], "fkl_dense": [199.0, 200.0, 199.5],
                  "taid": [195.0, 196.0, 197.0], "taid_no_adaptive": [196.0, 197.0, 198.0]},
                 taid={"t_curve": curve})
    v = V.tinyshakespeare_verdicts(data)
    assert v["fkl"].status == V.WORKS and v["fkl_dense"].status == V.WORKS
    assert v["taid"].status == V.WORKS and "t ends at 1.00" in v["taid"].detail
    assert v["taid_no_adaptive"].status == V.ROLE
    data["runs"] = [r for r in data["runs"] if r["arm"] != "taid_no_adaptive"]
    assert "disable_adaptive" in V.tinyshakespeare_verdicts(data)["taid"].detail  # pending without the control
    worse = _runs({"ce": [300.0, 310.0, 305.0], "fkl": [210.0, 211.0, 212.0], "fkl_dense": [200.0, 200.5, 199.5]})
    assert V.tinyshakespeare_verdicts(worse)["fkl_dense"].status == V.MISSED  # top-64 costs 5% > 2%
    one_seed = {"setup": {"seed": 0}, "arms": {"ce": {"val_perplexity": 300.0},
                                               "taid": {"val_perplexity": 250.0, "t_curve": [0.4, 0.7, 0.99]}}}
    assert V.tinyshakespeare_verdicts(one_seed)["taid"].status == V.PENDING


def test_the_table_compares_each_sparse_store_with_dense(tmp_path):
    extra = {"teacher": "k64", "train_tokens": 1_220_608, "tokens_per_second": 500.0, "teacher_agreement": 0.3,
             "cpu_seconds_per_step": 3.0}
    data = _runs({"ce": [300.0, 310.0, 305.0], "fkl": [206.0, 204.0, 205.0], "fkl_dense": [200.0, 200.0, 200.0],
                  "fkl_k256": [202.0, 203.0, 201.0]}, **{a: extra for a in ("ce", "fkl", "fkl_dense", "fkl_k256")})
    data["teacher"] = {"val_perplexity": 59.4}
    T.render(data, tmp_path / "t.md", "cmd")
    cells = [line.strip("| ").split(" | ") for line in (tmp_path / "t.md").read_text().splitlines()]
    rows = {c[0]: " | ".join(c) for c in cells if len(c) > 1 and c[1].startswith("top-")}
    assert set(rows) == {"fkl", "fkl_k256"}  # no run of fkl_k1, fkl_k8 or fkl_zero: no row
    assert " | 3 | +2.50 [" in rows["fkl"] and "+3.00, +2.00, +2.50" in rows["fkl"]
    assert " | 3 | +1.00 [" in rows["fkl_k256"]


def test_queued_arms_are_pending_rows_and_the_48_step_rows_are_superseded():
    data = _runs({"ce": [300.0], "fkl": [200.0]})
    data["args"] = {"configs": "configs/tinyshakespeare_1m", "sets": []}
    v = V.tinyshakespeare_verdicts(data)
    assert set(v) == set(T.ARMS)  # every recipe of the folder is a row, run or not
    assert v["seqkd_ce"].status == V.PENDING and "not run yet: seqkd_ce" in v["seqkd_ce"].detail
    assert v["ce"].status == V.ROLE
    old = {"setup": {"seed": 0}, "arms": {"ce": {"val_perplexity": 300.0}, "fkl": {"val_perplexity": 250.0},
                                          "seqkd_ce": {"val_perplexity": 280.0}}}
    assert {r.status for r in V.tinyshakespeare_48_verdicts(old).values()} == {V.ROLE}  # counted nowhere
    assert "tinyshakespeare_1m" in V.tinyshakespeare_48_verdicts(old)["fkl"].detail
