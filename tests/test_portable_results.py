"""Benchmark result files hold paths relative to the repository, never absolute paths of one machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from portable import portable, write_json  # noqa: E402


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def test_committed_results_hold_no_absolute_paths():
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        absolute = [s for s in strings(json.loads(path.read_text())) if s.startswith("/")]
        assert not absolute, f"{path.name}: {absolute[:3]}"


def test_write_json_makes_paths_relative_to_the_repo(tmp_path):
    record = {"run_dir": str(REPO / "benchmarks" / "work" / "r"), "data": str(REPO.parent / "shared" / "d.tar.gz"),
              "runs": [{"recipe": "configs/cifar10/kd.yaml", "other": "/nowhere-else/x"}], "n": 3}
    write_json(tmp_path / "r.json", record)
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["run_dir"] == "benchmarks/work/r" and got["data"] == "../shared/d.tar.gz"
    assert got["runs"] == [{"recipe": "configs/cifar10/kd.yaml", "other": "/nowhere-else/x"}] and got["n"] == 3
    assert portable(got) == got
