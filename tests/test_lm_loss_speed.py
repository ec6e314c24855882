"""benchmarks/lm_loss_speed.py: its smoke run times every arm and finds the blocked losses equal to autograd."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import lm_loss_speed  # noqa: E402


def test_quick_run_writes_every_arm_with_equal_results(capsys):
    lm_loss_speed.main(["--quick"])
    written = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("wrote ")
    res = json.loads(Path(written).with_suffix(".json").read_text())
    rows = {r["arm"]: r for r in res["rows"]}
    assert list(rows) == ["ce", "fkl_top64", "fkl_dense", "rkl_dense", "taid_top64"]
    for name, row in rows.items():
        assert row["now_s"] > 0 and row["before_s"] > 0 and row["speedup"] > 0
        assert row["max_abs_diff_loss"] < 1e-5 and row["max_abs_diff_grad"] < 1e-6, name
