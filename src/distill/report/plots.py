"""Curves of one or more runs, read from their ``metrics.csv``, and bar charts of benchmark gains."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from distill.train.logs import read_metrics


def series(run_dir: Path, split: str, metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in read_metrics(run_dir):
        if row["split"] == split and row["metric"] == metric:
            xs.append(float(row["epoch"]) if split == "eval" else float(row["step"]))
            ys.append(float(row["value"]))
    return xs, ys


def _save(fig: Any, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_runs(runs: dict[str, Path], out: Path, title: str = "") -> Path:
    """Two panels: evaluation accuracy per epoch and training loss per step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run_dir in runs.items():
        x, y = series(run_dir, "eval", "accuracy")
        ax1.plot(x, [100 * v for v in y], marker="o", label=label)
        x, y = series(run_dir, "train", "loss")
        ax2.plot(x, y, label=label, alpha=0.8)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.set_xlabel("optimiser step")
    ax2.set_ylabel("training loss (weighted sum of terms)")
    ax2.grid(alpha=0.3)
    ax2.legend()
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
