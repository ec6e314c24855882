"""benchmarks/sweep.py: recipe discovery, lock-merged resumable records, mean ± sd and paired 95% intervals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import sweep  # noqa: E402


def test_discover_arms_in_declared_order_bases_excluded(tmp_path):
    for name in ("_base", "b", "a", "kd", "scratch"):
        (tmp_path / f"{name}.yaml").write_text("{}")
    assert list(sweep.discover_arms(tmp_path, ["scratch", "kd", "missing"])) == ["scratch", "kd", "a", "b"]
    with pytest.raises(FileNotFoundError):
        sweep.discover_arms(tmp_path / "nope")


def test_save_run_merges_with_the_file_and_drops_other_settings(tmp_path):
    path = tmp_path / "r.json"
    mine = {"args": {"epochs": 15}, "runs": []}
    other = {"args": {"epochs": 15}, "runs": []}
    sweep.save_run(path, mine, {"arm": "kd", "seed": 0, "accuracy": 0.5})
    sweep.save_run(path, other, {"arm": "at", "seed": 0, "accuracy": 0.6})  # another process, same file
    sweep.save_run(path, mine, {"arm": "kd", "seed": 0, "accuracy": 0.7})  # a rerun replaces its record
    runs = {(r["arm"], r["seed"]): r["accuracy"] for r in json.loads(path.read_text())["runs"]}
    assert runs == {("kd", 0): 0.7, ("at", 0): 0.6}
    assert sweep.previous_runs(path, {"args": {"epochs": 15}}, ("epochs",)) and \
        sweep.previous_runs(path, {"args": {"epochs": 2}}, ("epochs",)) == []
    sweep.save_run(path, {"args": {"epochs": 2}, "runs": []}, {"arm": "kd", "seed": 1, "accuracy": 0.1})
    assert [r["seed"] for r in json.loads(path.read_text())["runs"]] == [1]
    assert not path.with_suffix(".json.tmp").exists()


def test_save_run_keeps_the_store_entries_another_process_added(tmp_path):
    path = tmp_path / "r.json"
    stale = {"args": {"epochs": 15}, "runs": [], "stores": {"k64": {"mb": 1.0}}}  # read before k256 was built
    sweep.save_run(path, {"args": {"epochs": 15}, "runs": [], "stores": {"k64": {"mb": 1.0}, "k256": {"mb": 4.0}}},
                   {"arm": "ce", "seed": 0, "accuracy": 0.1})
    sweep.save_run(path, stale, {"arm": "kd", "seed": 0, "accuracy": 0.2}, merge_keys=("stores",))
    assert set(json.loads(path.read_text())["stores"]) == {"k64", "k256"}
    sweep.save_run(path, dict(stale, stores={"k64": {"mb": 1.0}}), {"arm": "kd", "seed": 1, "accuracy": 0.3})
    assert set(json.loads(path.read_text())["stores"]) == {"k64"}  # without merge_keys the caller's copy is written


def test_summary_and_paired_interval():
    runs = [{"arm": a, "seed": s, "accuracy": v} for a, s, v in [
        ("kd", 0, 0.62), ("kd", 1, 0.64), ("kd", 2, 0.63), ("scratch", 0, 0.60), ("scratch", 1, 0.61),
        ("scratch", 2, 0.60), ("at", 5, 0.70)]]
    rows = {s.arm: s for s in sweep.summarise(runs, baseline="scratch", order=["scratch", "kd"])}
    assert list(rows) == ["scratch", "kd", "at"]
    kd = rows["kd"]
    assert kd.mean == pytest.approx(63.0) and kd.sd == pytest.approx(1.0)
    # differences 2, 3, 3: mean 8/3, sd 0.577, t(2) = 4.303
    half = 4.303 * 0.5773503 / 3 ** 0.5
    assert kd.diff == pytest.approx(8 / 3) and kd.ci == pytest.approx((8 / 3 - half, 8 / 3 + half), abs=1e-4)
    assert rows["scratch"].diff is None and rows["at"].diff is None  # no common seed
    assert sweep.format_diff(kd).startswith("+2.67 [") and sweep.format_mean(rows["at"]) == "70.00"
    table = sweep.markdown_table(list(rows.values()), baseline="scratch")
    assert table[2].startswith("| scratch | 60.33 ± 0.58 |  |")


def test_t_quantile():
    assert sweep.t_quantile_975(1) == 12.706 and sweep.t_quantile_975(30) == 2.042
    assert sweep.t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)
    assert sweep.t_quantile_975(10_000) == pytest.approx(1.960, abs=1e-3)


def test_arm_start_finds_the_arms_makes_out_and_answers_report_only(tmp_path, monkeypatch, capsys):
    for name in ("_base", "kd", "scratch", "teacher"):
        (tmp_path / f"{name}.yaml").write_text("{}")
    out = tmp_path / "results" / "deep"
    tables = []

    def write_table(folder: Path, name: str, results: dict) -> Path:
        tables.append(results)
        md = folder / f"{name}.md"
        md.write_text(f"table of {len(results['runs'])} runs\n")
        return md

    def start(*flags: str):
        monkeypatch.setattr(sys, "argv", ["bench", "--out", str(out), "--name", "t", *flags])
        return sweep.arm_start(sweep.arm_parser(None, "bench", ["scratch"]), tmp_path, ["scratch"], write_table,
                               stages=["teacher"])

    args, files, results_path = start("--seeds", "4")
    assert list(files) == ["scratch", "kd"] and args.seeds == [4] and out.is_dir()
    assert results_path == out / "t.json" and not tables  # a real run: nothing reported yet
    results_path.write_text(json.dumps({"runs": [{"arm": "kd", "seed": 0}]}))
    assert start("--report-only") is None
    assert tables == [{"runs": [{"arm": "kd", "seed": 0}]}] and capsys.readouterr().out == "table of 1 runs\n\n"
