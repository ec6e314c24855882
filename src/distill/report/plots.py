"""Curves of one or more runs, read from their ``metrics.csv``, and bar charts of benchmark gains."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from distill.train.logs import read_metrics

#: the task families' primary metrics, the first logged of which :func:`plot_runs` shows by default
HEADLINE_METRICS = ("accuracy", "perplexity", "group_mrr", "ndcg@10", "cosine_to_teacher", "spearman")
#: fractions shown as percentages
PERCENT_METRICS = ("accuracy", "top5", "teacher_agreement", "group_accuracy")
#: evaluation values that are bookkeeping, never the curve to show
NOT_HEADLINES = ("epoch_time", "tokens", "examples_per_s", "steps_per_s")


def series(run_dir: Path, split: str, metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in read_metrics(run_dir):
        if row["split"] == split and row["metric"] == metric:
            try:
                x = float(row["epoch"]) if split == "eval" else float(row["step"])
                y = float(row["value"])
            except ValueError:
                continue
            xs.append(x)
            ys.append(y)
    return xs, ys


def headline_metric(runs: dict[str, Path]) -> str | None:
    """The evaluation metric to plot for ``runs``: the first of :data:`HEADLINE_METRICS` any of them logged, else
    their first other evaluation metric (``loss`` last), else None (no evaluation logged)."""
    logged: list[str] = []
    for run_dir in runs.values():
        if (Path(run_dir) / "metrics.csv").exists():
            logged += [r["metric"] for r in read_metrics(run_dir) if r["split"] == "eval" and r["metric"] not in logged]
    for name in HEADLINE_METRICS:
        if name in logged:
            return name
    others = sorted(m for m in logged if m not in NOT_HEADLINES)
    return next((m for m in others if m != "loss"), others[0] if others else None)


def _save(fig: Any, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_runs(runs: dict[str, Path], out: Path, title: str = "", metric: str | None = None) -> Path:
    """Two panels: an evaluation metric per epoch (``metric``, default :func:`headline_metric`: accuracy,
    perplexity, MRR, ... whichever the runs logged) and the training loss per step, one line per run. A panel with
    nothing logged says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or headline_metric(runs)
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = {ax1: 0, ax2: 0}
    for label, run_dir in runs.items():
        has_log = (Path(run_dir) / "metrics.csv").exists()
        if metric is not None and has_log:
            x, y = series(run_dir, "eval", metric)
            if x:
                ax1.plot(x, [scale * v for v in y], marker="o", label=label)
                drawn[ax1] += 1
        x, y = series(run_dir, "train", "loss") if has_log else ([], [])
        if x:
            ax2.plot(x, y, label=label, alpha=0.8, marker="o" if len(x) < 3 else None)
            drawn[ax2] += 1
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(f"evaluation {metric}" + (" (%)" if scale != 1.0 else "") if metric else "evaluation")
    if metric == "perplexity":
        ax1.set_yscale("log")
    ax2.set_xlabel("optimiser step")
    ax2.set_ylabel("training loss (weighted sum of terms)")
    for ax, empty in ((ax1, "no evaluation metric logged"), (ax2, "no training loss logged")):
        ax.grid(alpha=0.3)
        if drawn[ax]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_gains(groups: dict[str, dict[str, list[float]]], out: Path, baseline: str = "scratch",
               title: str = "", xlabel: str = "gain over the baseline (points)") -> Path:
    """Horizontal bars of each method's mean score minus ``baseline``'s mean, one colour per group (for example
    one per teacher/student pair), with the per-seed values as dots. ``groups`` maps group -> method -> scores
    (one per seed); methods are ordered by their mean gain over the groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, scores in groups.items():
        if baseline not in scores:
            raise ValueError(f"plot_gains: group {name!r} has no {baseline!r} scores")

    def gain(scores: dict[str, list[float]], method: str) -> list[float]:
        base = sum(scores[baseline]) / len(scores[baseline])
        return [v - base for v in scores[method]]

    methods = sorted({m for g in groups.values() for m in g if m != baseline},
                     key=lambda m: sum(sum(gain(g, m)) / len(g[m]) for g in groups.values() if m in g)
                     / sum(m in g for g in groups.values()))
    height = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(methods) * max(1, len(groups)) ** 0.5 + 1.5))
    for k, (name, scores) in enumerate(groups.items()):
        ys, means = [], []
        for i, m in enumerate(methods):
            if m not in scores:
                continue
            g = gain(scores, m)
            y = i + (k - (len(groups) - 1) / 2) * height
            ys.append(y)
            means.append(sum(g) / len(g))
            ax.scatter(g, [y] * len(g), color="black", s=6, zorder=3)
        ax.barh(ys, means, height=height, label=name)
    ax.set_yticks(range(len(methods)), methods)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return _save(fig, out)


def final_metrics(run_dir: Path) -> dict[str, float]:
    last: dict[str, float] = defaultdict(float)
    for row in read_metrics(run_dir):
        if row["split"] == "eval":
            last[row["metric"]] = float(row["value"])
    return dict(last)
