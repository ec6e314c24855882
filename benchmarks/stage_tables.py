"""What the pipeline benchmarks (``pipelines_dd``, ``pipelines_kd3``, ``pipelines_pcoreset``) share: the mean ± sd
cell, the note on a paired difference within its spread, and the run that adds the stages one at a time, keeps the
CPU seconds each stage took to build and rewrites the result table after every stage."""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from portable import write_json

#: report -> (the results JSON, the Markdown table)
Table = Callable[[dict[str, Any]], tuple[dict[str, Any], str]]


def msd(xs: list[float], scale: float = 100.0) -> str:
    """``mean ± sd`` of ``xs`` times ``scale`` (sd 0 for one value); ``-`` when empty."""
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.2f} ± {scale * sd:.2f}"


def noise(d: list[float]) -> str:
    """A note when a paired difference is smaller than its spread across seeds."""
    return (" (the paired difference is within its spread across seeds)"
            if len(d) > 1 and abs(statistics.mean(d)) < statistics.stdev(d) else "")


def run_stage_by_stage(raw: dict[str, Any], stages: Sequence[dict[str, Any]], base_dir: Path, work: str | Path,
                       results: Path, table: Table, first_table: int = 1) -> None:
    """Run the pipeline ``raw`` with ``stages[:1]``, ``stages[:2]``, ... (finished stages are reused, so each run
    builds one stage and its process time is that stage's CPU seconds, kept in ``<work>/cpu_seconds.json`` across
    resumed runs); once ``first_table`` stages are in, write ``table(report)`` (the report with ``cpu_seconds``)
    to ``results``.json / .md after every stage."""
    from distill.pipelines.pipeline import parse_pipeline, run_pipeline

    cfile = Path(work) / "cpu_seconds.json"
    costs = json.loads(cfile.read_text()) if cfile.is_file() else {}
    for n in range(1, len(stages) + 1):
        raw["stages"] = list(stages[:n])
        t0 = time.process_time()
        report = run_pipeline(parse_pipeline(copy.deepcopy(raw), base_dir=base_dir))
        last = report["stages"][-1]
        if last["status"] != "reused":
            costs[last["stage"]] = round(costs.get(last["stage"], 0.0) + time.process_time() - t0, 1)
            write_json(cfile, costs)
        if n < first_table:
            continue
        report["cpu_seconds"] = costs
        out, md = table(report)
        write_json(results.with_suffix(".json"), out)
        results.with_suffix(".md").write_text(md)
