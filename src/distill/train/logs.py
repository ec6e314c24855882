"""Metric logs: a long-format CSV (step, epoch, split, metric, value) and TensorBoard scalars."""

from __future__ import annotations

import csv
from pathlib import Path

FIELDS = ["step", "epoch", "split", "metric", "value"]


class MetricLog:
    """Append-only metric log that can be rewound to a step when a run resumes."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._rewind(resume_step)
        elif self.path.exists() and resume_step is None:
            self.path.unlink()
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(FIELDS)
            self._file.flush()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self._tb = None

    def _rewind(self, step: int) -> None:
        """Keep the rows up to ``step``; a row cut short by a kill, or otherwise damaged, is dropped (the log is a
        record, not state: nothing is resumed from it)."""
        with open(self.path, newline="", errors="replace") as f:
            rows = [r for r in csv.reader(line.replace("\0", "") for line in f)]

        def kept(r: list[str]) -> bool:
            return len(r) == len(FIELDS) and r[0].isdigit() and int(r[0]) <= step and _is_number(r[4])

        keep = [FIELDS] + [r for r in rows[1:] if kept(r)]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        tmp.replace(self.path)

    def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._csv.writerow([step, epoch, split, name, f"{float(value):.6g}"])
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{name}", float(value), step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))
