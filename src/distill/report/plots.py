"""Curves of one or more runs, read from their ``metrics.csv``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from distill.train.logs import read_metrics


def series(run_dir: Path, split: str, metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in read_metrics(run_dir):
        if row["split"] == split and row["metric"] == metric:
            xs.append(float(row["epoch"]) if split == "eval" else float(row["step"]))
            ys.append(float(row["value"]))
    return xs, ys


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
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def final_metrics(run_dir: Path) -> dict[str, float]:
    last: dict[str, float] = defaultdict(float)
    for row in read_metrics(run_dir):
        if row["split"] == "eval":
            last[row["metric"]] = float(row["value"])
    return dict(last)
