"""Experiment trackers (``train.trackers``): Accelerate's trackers receive every metric the run writes to
``metrics.csv``, under ``split/metric`` names at the same step. A tracker whose package is not installed is refused
when the config is read, naming the package."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

#: the package each tracker needs (what ``pip install`` takes)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}
#: the project name the trackers log the run under (the run folder's name is the run's name)
PROJECT = "distill"


def missing_tracker(names: list[str]) -> str | None:
    """``"trackers[i]: ..."`` for the first tracker whose package is not installed, else None."""
    from accelerate.utils import imports

    for i, name in enumerate(names):
        available = getattr(imports, f"is_{name}_available", None)
        if available is None or not available():
            pkg = PACKAGES.get(name, name)
            return (f"trackers[{i}]: {name!r} needs the package {pkg}, which is not installed (pip install {pkg}, "
                    "or drop it from train.trackers)")
    return None


def accelerator_kwargs(names: list[str], run_dir: Path) -> dict[str, Any]:
    """What ``Accelerator(...)`` takes to log to ``names`` (trackers write under ``RUN/trackers``)."""
    if not names:
        return {}
    return {"log_with": list(names), "project_dir": str(Path(run_dir) / "trackers")}


def start_trackers(accelerator: Any, config: Any, run_dir: Path) -> None:
    """Open the trackers with the training settings as their configuration (scalars only)."""
    values = {k: v for k, v in asdict(config).items() if isinstance(v, bool | int | float | str)}
    name = Path(run_dir).name
    accelerator.init_trackers(PROJECT, config=values,
                              init_kwargs={"wandb": {"name": name}, "mlflow": {"run_name": name}})


class TrackedLog:
    """A metric log that also sends each row to the Accelerate trackers (``split/metric`` at the row's step)."""

    def __init__(self, log: Any, accelerator: Any) -> None:
        self.inner = log
        self.accelerator = accelerator

    def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        self.inner.log(step, epoch, split, values)
        self.accelerator.log({f"{split}/{k}": float(v) for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.inner.close()
        self.accelerator.end_training()
