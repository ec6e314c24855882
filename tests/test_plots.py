"""Benchmark reports: the gains bar chart and the catalogue table with its cost columns."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from distill.report.plots import plot_gains

REPO = Path(__file__).resolve().parents[1]


def test_plot_gains_writes_png_and_needs_baseline(tmp_path: Path) -> None:
    groups = {"pair a": {"scratch": [60.0, 61.0], "kd": [63.0, 62.0], "fitnet": [75.0]},
              "pair b": {"scratch": [50.0], "kd": [49.0]}}
    out = plot_gains(groups, tmp_path / "gains.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="pair c.*scratch"):
        plot_gains({**groups, "pair c": {"kd": [1.0]}}, tmp_path / "bad.png")


def load_bench():
    spec = importlib.util.spec_from_file_location("cifar10_kd", REPO / "benchmarks" / "cifar10_kd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_catalogue_report_uses_the_cost_benchmark(tmp_path: Path) -> None:
    bench = load_bench()
    teacher = {"test_accuracy_before": 0.8, "test_accuracy_after": 0.9, "train": {"epochs": 3},
               "train_images": 50000, "test_images": 10000}
    runs = [{"arm": a, "seed": s, "accuracy": acc, "epoch_time_s": 99.0, "run_dir": str(tmp_path / "none")}
            for a, s, acc in [("scratch", 0, 0.60), ("scratch", 1, 0.62), ("kd", 0, 0.64), ("kd", 1, 0.63)]]
    (tmp_path / "cifar10_catalogue.json").write_text(json.dumps(
        {"teacher": teacher, "runs": runs, "args": {"student": "resnet20", "epochs": 15, "per_class": 500}}))
    (tmp_path / "catalogue_cost_resnet20.json").write_text(json.dumps(
        {"arms": {"scratch": {"vs_scratch": 1.0, "epoch_s": 20.0}, "kd": {"vs_scratch": 1.9, "epoch_s": 38.2}}}))
    args = argparse.Namespace(out=tmp_path, student="resnet20", per_class=500, epochs=15, quick=False,
                              catalogue=True, skipped={}, name="cifar10_catalogue", seeds=[0])
    bench.report(args, json.loads((tmp_path / "cifar10_catalogue.json").read_text()))
    md = (tmp_path / "cifar10_catalogue.md").read_text()
    assert "seeds 0, 1." in md  # the seeds of the runs, not of the command line
    # the gain is the paired difference over the common seeds, with its 95% t-interval
    assert "| kd | 63.50 ± 0.71 | +2.50 [-16.56, +21.56] | 64.00, 63.00 | 1.90 | 38 |" in md
    assert "99.0" not in md  # the runs' own epoch times are not shown once the cost benchmark exists
    assert (tmp_path / "cifar10_catalogue_gains.png").exists()


def test_cost_summary_takes_each_arms_fastest_round() -> None:
    spec = importlib.util.spec_from_file_location("catalogue_cost", REPO / "benchmarks" / "catalogue_cost.py")
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)
    rounds = {"scratch": [0.6, 0.4, 0.5], "kd": [0.9, 0.8, 1.2], "dho": [0.8, 1.0, 0.9]}
    rows = cost.summarise(rounds, {"scratch": 960, "kd": 960, "dho": 1920}, per_class=96, full_per_class=500)
    assert rows["kd"]["step_s"] == 0.8 and rows["kd"]["vs_scratch"] == pytest.approx(2.0)
    assert rows["dho"]["vs_kd"] == pytest.approx(1.0)
    assert rows["scratch"]["epoch_s"] == pytest.approx(0.4 * 79)  # 5,000 images / batch 64
    assert rows["dho"]["epoch_s"] == pytest.approx(0.8 * 158)  # twice the images per epoch
    assert rows["dho"]["rounds_step_s"] == [0.8, 1.0, 0.9]


def load_sync():
    spec = importlib.util.spec_from_file_location("sync_readme_tables", REPO / "scripts" / "sync_readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_page_tables_are_the_committed_result_files() -> None:
    """benchmarks/README.md holds the tables; README.md is checked too wherever it still quotes one."""
    sync = load_sync()
    assert (REPO / "benchmarks" / "README.md") in sync.DEFAULT_FILES and (REPO / "README.md") in sync.DEFAULT_FILES
    assert "<!-- table: " in (REPO / "benchmarks" / "README.md").read_text()
    for md in sync.DEFAULT_FILES:
        text = md.read_text()
        assert sync.sync(text, REPO) == text, f"{md.relative_to(REPO)}: run python scripts/sync_readme_tables.py"


def test_every_result_table_is_on_the_benchmark_page() -> None:
    """Every result file is quoted between table markers or named on the benchmark page."""
    page = (REPO / "benchmarks" / "README.md").read_text()
    quoted = {m.group("path") for m in load_sync().BLOCK.finditer(page)}
    for md in sorted((REPO / "benchmarks" / "results").glob("*.md")):
        path = md.relative_to(REPO).as_posix()
        named = path in page or path.removesuffix(".md") + ".{json,md}" in page
        assert path in quoted or named, f"{path}: neither quoted between markers nor named in benchmarks/README.md"


def test_sync_replaces_a_block_and_separates_notes_from_the_table(tmp_path: Path) -> None:
    sync = load_sync()
    (tmp_path / "r.md").write_text("intro\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nNot applicable: x.\n")
    doc = "before\n<!-- table: r.md -->\nold rows\n<!-- /table -->\nafter\n"
    assert sync.sync(doc, tmp_path) == ("before\n<!-- table: r.md -->\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                                        "Not applicable: x.\n<!-- /table -->\nafter\n")
    with pytest.raises(FileNotFoundError, match="missing.md"):
        sync.sync("<!-- table: missing.md -->\n<!-- /table -->", tmp_path)


def test_two_tables_of_one_file_stay_two_tables(tmp_path) -> None:
    """A result file with two tables apart (a caption or blank line between them) is quoted as two tables, each with
    the caption that introduces it when the caption is one the page keeps; the notes around them are dropped."""
    md = tmp_path / "r.md"
    md.write_text("# title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nsome note\n\nTeacher stores (training blocks):\n\n"
                  "| store | size |\n|---|---|\n| top-64 | 118 |\n| top-8 | 15 |\n")
    quoted = load_sync().table_lines(md).splitlines()
    assert quoted == ["| a | b |", "|---|---|", "| 1 | 2 |", "", "Teacher stores (training blocks):", "",
                      "| store | size |", "|---|---|", "| top-64 | 118 |", "| top-8 | 15 |"]
    md.write_text("| a |\n|---|\n| 1 |\n\n| c |\n|---|\n| 3 |\n")  # two tables, only a blank line between
    assert load_sync().table_lines(md).splitlines() == ["| a |", "|---|", "| 1 |", "", "| c |", "|---|", "| 3 |"]
