"""Shared by the data-generating LLM rows' demonstrations (rationale_sst2.py, pgkd_sst5.py, symbolic_kd_sst2.py):
per-seed result files (a finished seed is never rerun), mean +- sd tables, paired differences, the two outputs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import paired_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def seed_file(work: Path, seed: int) -> Path:
    return work / f"seed{seed}.json"


def load_seed(work: Path, seed: int) -> dict[str, Any] | None:
    f = seed_file(work, seed)
    return json.loads(f.read_text()) if f.is_file() else None


def save_seed(work: Path, seed: int, result: dict[str, Any]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tmp = seed_file(work, seed).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(seed_file(work, seed))


def msd(xs: list[float], scale: float = 100.0) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.2f} ± {scale * sd:.2f}"


def by_arm(per_seed: dict[int, dict[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for s, res in sorted(per_seed.items()):
        for arm, vals in res["arms"].items():
            if metric in vals:
                out.setdefault(arm, {})[s] = float(vals[metric])
    return out


def paired(arms: dict[str, dict[int, float]], a: str, b: str, scale: float = 100.0) -> dict[str, Any]:
    mean, ci, n = paired_difference(arms.get(a, {}), arms.get(b, {}))
    return {"a": a, "b": b, "mean": None if mean is None else scale * mean,
            "ci95": None if ci is None else [scale * ci[0], scale * ci[1]], "seeds": n}


def sd(xs: dict[int, float]) -> float:
    v = list(xs.values())
    return statistics.stdev(v) if len(v) > 1 else 0.0


def write_outputs(name: str, payload: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{name}.json", payload)
    (RESULTS / f"{name}.md").write_text(markdown)


def arm_table(arms: dict[str, dict[int, float]], order: list[str], labels: dict[str, str], baseline: str,
              metric_name: str) -> list[str]:
    lines = [f"| arm | {metric_name} (mean ± sd, %) | seeds | paired diff vs {labels.get(baseline, baseline)} |",
             "|---|---|---|---|"]
    for a in order:
        if a not in arms:
            continue
        p = paired(arms, a, baseline)
        diff = "-" if a == baseline or p["mean"] is None else f"{p['mean']:+.2f}" + (
            f" [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]" if p["ci95"] else "")
        lines.append(f"| {labels.get(a, a)} | {msd(list(arms[a].values()))} | {len(arms[a])} | {diff} |")
    return lines
