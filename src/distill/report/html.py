"""``distill report RUN [RUN ...] --out report.html``: one self-contained HTML page comparing runs.

Side-by-side tables of each run's configuration summary and final metrics, and, per run, a plot of every metric it
logged (``metrics.csv``: training losses and throughput over steps, evaluation metrics over epochs, whatever names
the family logs), embedded as base64 PNG images (matplotlib, Agg). No scripts, fonts or links to fetch.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import io
import math
from collections import defaultdict
from html import escape
from pathlib import Path
from typing import Any

from distill.export.run import RunFolder

#: splits that are settings or single values rather than curves
NOT_CURVES = ("hparams", "teacher")


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def curves(rows: list[dict[str, str]]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(split, metric) -> (x, y): x is the epoch for ``eval`` rows and the optimiser step otherwise."""
    out: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for r in rows:
        if r["split"] in NOT_CURVES:
            continue
        try:
            y = float(r["value"])
            x = float(r["epoch"]) if r["split"] == "eval" else float(r["step"])
        except (KeyError, ValueError):
            continue
        xs, ys = out[(r["split"], r["metric"])]
        xs.append(x)
        ys.append(y)
    return dict(out)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_curves(name: str, data: dict[tuple[str, str], tuple[list[float], list[float]]]) -> str | None:
    """One figure, one small panel per logged (split, metric), as base64 PNG (None when nothing was logged)."""
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(data, key=lambda k: (k[0] != "eval", k[0], k[1]))
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    for ax, (split, metric) in zip(axes.flat, keys):
        xs, ys = data[(split, metric)]
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(f"{split}/{metric}", fontsize=9)
        ax.set_xlabel("epoch" if split == "eval" else "step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(name, fontsize=10)
    return _png(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _classes(classes: list[str] | None, shown: int = 20) -> str:
    if not classes:
        return "-"
    more = f", ... ({len(classes)} in all)" if len(classes) > shown else ""
    return ", ".join(f"{i}: {c}" for i, c in enumerate(classes[:shown])) + more


def run_summary(run: RunFolder, rows: list[dict[str, str]]) -> dict[str, str]:
    """The configuration rows of the side-by-side table."""
    raw = run.raw_config
    student = raw.get("student") or {}
    teacher = raw.get("teacher") or {}
    train = raw.get("train") or {}
    data = raw.get("data") or {}
    methods = ", ".join(f"{m.get('label') or m['name']} x{m.get('weight', 1.0):g}" for m in raw.get("methods") or [])
    if teacher:
        t = teacher.get("arch") or teacher.get("path") or ("ensemble" if teacher.get("ensemble") else "default")
        if teacher.get("cache"):
            t += " (cached)"
        if teacher.get("scores"):
            t = f"score file {teacher['scores']}"
    else:
        t = "none"
    throughput = [float(r["value"]) for r in rows if r["split"] == "train" and r["metric"] == "examples_per_s"]
    s = run.summary or {}
    out = {
        "task": run.task,
        "student": str(student.get("arch") or student.get("path") or "default"),
        "teacher": t,
        "methods": methods or "-",
        "data": str(next((data[k] for k in ("train", "text", "path", "cranfield", "triples", "hard_negatives", "docs")
                          if data.get(k)), "-")),
        "epochs x batch": f"{train.get('epochs', '-')} x {train.get('batch_size', '-')}",
        "optimizer, lr": f"{train.get('optimizer', '-')}, {train.get('lr', '-')}",
        "classes (output order)": _classes(run.classes),
        "seed": str(raw.get("seed", "-")),
        "steps": _fmt(s.get("steps", "-")),
        "wall time (s)": _fmt(float(s["wall_time_s"])) if "wall_time_s" in s else "-",
        "examples/s (mean)": _fmt(sum(throughput) / len(throughput)) if throughput else "-",
    }
    return out


def final_metrics(run: RunFolder, rows: list[dict[str, str]]) -> dict[str, float]:
    """``summary.json``'s final metrics, else the last evaluation logged; the teacher's as ``teacher <name>``."""
    final: dict[str, float] = {k: float(v) for k, v in run.final.items() if isinstance(v, int | float)}
    if not final:
        for r in rows:
            if r["split"] == "eval":
                final[r["metric"]] = float(r["value"])
    for r in rows:
        if r["split"] == "teacher" and not r["metric"].startswith("teacher_"):  # not the teacher against itself
            final[f"teacher {r['metric']}"] = float(r["value"])
    return final


def _table(title: str, names: list[str], columns: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for col in columns:
        keys += [k for k in col if k not in keys]
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = "".join("<tr><th>" + escape(k) + "</th>" + "".join(
        f"<td>{escape(_fmt(col[k])) if k in col else '&ndash;'}</td>" for col in columns) + "</tr>" for k in keys)
    return f"<h2>{escape(title)}</h2>\n<table><tr><th></th>{head}</tr>{body}</table>\n"


STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin-bottom: 16px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 13px; vertical-align: top; }
tr th:first-child { background: #f4f4f4; }
img { max-width: 100%; border: 1px solid #ddd; }
.run { margin-bottom: 28px; }
"""


def build_report(run_dirs: list[str | Path], title: str = "distill report") -> str:
    """The HTML text of the report of ``run_dirs`` (see the module docstring)."""
    runs = [RunFolder.open(p) for p in run_dirs]
    names: list[str] = []
    for run in runs:
        name = run.path.resolve().name
        while name in names:
            name = f"{run.path.resolve().parent.name}/{name}"
        names.append(name)
    all_rows = [_metrics_rows(run.path) for run in runs]
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f"<p>{len(runs)} run(s); generated {escape(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}.</p>",
             _table("Configuration", names, [run_summary(r, rows) for r, rows in zip(runs, all_rows)]),
             _table("Final metrics", names, [final_metrics(r, rows) for r, rows in zip(runs, all_rows)]),
             "<h2>Logged metrics</h2>"]
    for name, run, rows in zip(names, runs, all_rows):
        png = plot_curves(name, curves(rows))
        parts.append(f"<div class='run'><h3>{escape(name)}</h3><p><code>{escape(str(run.path))}</code></p>")
        parts.append(f"<img alt='metrics of {escape(name)}' src='data:image/png;base64,{png}'>" if png
                     else "<p>No metrics logged (no metrics.csv).</p>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run_dirs: list[str | Path], out: str | Path, title: str = "distill report") -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(run_dirs, title), encoding="utf-8")
    return out
