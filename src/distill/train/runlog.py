"""What a run logs beside the trainer's losses and metrics, without touching the training loop: the
hyperparameters (once, at step 0, split ``hparams``; TensorBoard's HParams tab and a text summary), the teacher's
evaluation before training (split ``teacher``, step 0) and the training throughput per epoch (split ``train``,
metric ``examples_per_s``; also ``steps_per_s``). It runs as a trainer epoch callback and appends to the same
``metrics.csv`` (rows carry their step, so a resumed run rewinds them with the rest) and to the run's TensorBoard
folder ``tb`` (an events file of its own).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch

from distill.train.logs import FIELDS


def hyperparameters(cfg: Any, train_cfg: Any) -> dict[str, float | int | str | bool]:
    """The run's settings as flat scalars: the trainer's (``train.*``), the methods' weights and options
    (``method.<label>.*``), the student and teacher (``student.arch``, ...), the task and the seed."""
    from dataclasses import asdict

    out: dict[str, Any] = {"task": cfg.task, "seed": cfg.seed}
    for k, v in asdict(train_cfg).items():
        if isinstance(v, bool | int | float | str):
            out[f"train.{k}"] = v
        elif isinstance(v, list | tuple) and v:
            out[f"train.{k}"] = ",".join(map(str, v))
    for m in cfg.methods:
        label = m.label or m.name
        out[f"method.{label}.weight"] = float(m.weight)
        for k, v in m.options().items():
            if isinstance(v, bool | int | float | str):
                out[f"method.{label}.{k}"] = v
    for key in ("student", "teacher"):
        section = getattr(cfg, key, None)
        if section is not None:
            for k in ("arch", "path"):
                value = getattr(section, k, None)
                if value:
                    out[f"{key}.{k}"] = str(value)
    return out


class RunLog:
    """The trainer epoch callback described in the module docstring (rank 0 only; :meth:`close` at the end)."""

    def __init__(self, trainer: Any, cfg: Any, teacher_metrics: dict[str, float] | None = None,
                 tensorboard: bool = True):
        self.trainer = trainer
        self.cfg = cfg
        self.teacher_metrics = teacher_metrics
        self.run_dir = Path(trainer.run_dir)
        self.tensorboard = tensorboard
        self._tb: Any = None
        self._started = False

    # -- writing ------------------------------------------------------------------------------------------------
    def _writer(self) -> Any:
        if self._tb is None and self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"), filename_suffix=".runlog")
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.tensorboard = False
        return self._tb

    def _rows(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(FIELDS)
            for name, value in values.items():
                w.writerow([step, epoch, split, name, f"{float(value):.6g}"])
        tb = self._writer()
        if tb is not None:
            for name, value in values.items():
                tb.add_scalar(f"{split}/{name}", float(value), step)
            tb.flush()
        if self.trainer.cfg.trackers and split != "hparams":  # the settings went to the trackers when they opened
            self.trainer.accelerator.log({f"{split}/{k}": float(v) for k, v in values.items()}, step=step)

    def _already_logged(self, split: str) -> bool:
        path = self.run_dir / "metrics.csv"
        if not path.exists():
            return False
        with open(path, newline="") as f:
            return any(row.get("split") == split for row in csv.DictReader(f))

    def _start(self) -> None:
        self._started = True
        if self._already_logged("hparams"):  # a resumed run: logged by the run it continues
            return
        hp = hyperparameters(self.cfg, self.trainer.cfg)
        self._rows(0, 0, "hparams", {k: v for k, v in hp.items() if isinstance(v, int | float)})
        if self.teacher_metrics:
            self._rows(0, 0, "teacher", self.teacher_metrics)
        tb = self._writer()
        if tb is not None:
            from torch.utils.tensorboard.summary import hparams

            metric_names = {f"eval/{self.trainer.task.primary_metric}": 0.0}
            for summary in hparams(hp, metric_names):
                tb.file_writer.add_summary(summary)
            tb.add_text("hparams", "```\n" + json.dumps(hp, indent=2) + "\n```", 0)
            tb.flush()

    # -- the callback -------------------------------------------------------------------------------------------
    def __call__(self, record: dict[str, Any]) -> None:
        if not self.trainer.accelerator.is_main_process:
            return
        if not self._started:
            self._start()
        t = self.trainer
        seconds = float(record.get("epoch_time") or 0.0)
        init_epochs = int(t.module.methods.init_epochs)
        epoch_index = int(record["epoch"]) - 1 + (init_epochs if record.get("stage") == "main" else 0)
        steps = int(record["step"]) - epoch_index * t.steps_per_epoch  # this epoch's steps (all of them unless resumed)
        if seconds <= 0 or steps <= 0:
            return
        n = t.task.num_examples(t.train_data)
        examples = n if steps >= t.steps_per_epoch else min(n, steps * t.cfg.batch_size * t.cfg.grad_accum)
        self._rows(int(record["step"]), int(record["epoch"]), "train",
                   {"examples_per_s": examples / seconds, "steps_per_s": steps / seconds})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def evaluate_teacher(teacher: Any, task: Any, data: Any, batch_size: int = 256,
                     device: str = "cpu") -> dict[str, float] | None:
    """The task's metrics of a live teacher source on ``data``: one frozen model (through the task, as a student
    is evaluated), an ensemble or a sentence-transformers teacher (through the source itself, as training reads
    it). None for a teacher that is no model run on the inputs (a cache, a score file, aspect answers)."""
    from distill.core.teachers import FrozenTeacher
    from distill.train.evaluate import eval_batches, evaluate_model

    if not getattr(task, "teacher_evaluable", True):  # the teacher only feeds the student (anomaly detection)
        return None
    if isinstance(teacher, FrozenTeacher):
        metrics = evaluate_model(teacher.model, task, data, batch_size, device)
        teacher.model.to("cpu")
        return metrics
    models = [m.model for m in getattr(teacher, "members", []) if hasattr(m, "model")] or [getattr(teacher, "model",
                                                                                                 None)]
    if any(not isinstance(m, torch.nn.Module) for m in models) or not getattr(teacher, "evaluable", True):
        return None  # (a mixture routed by a data column, or reading the student: not on eval inputs alone)
    teacher.to(device)
    metrics = task.new_metrics()
    with torch.no_grad():
        for batch in eval_batches(task, data, batch_size, device):
            metrics.update(teacher(batch, task, ()).logits, batch)
    teacher.to("cpu")
    return metrics.compute()


def teacher_evaluation(experiment: Any) -> tuple[dict[str, float] | None, str]:
    """The live teacher's metrics on the trainer's evaluation split, or None and why not. A teacher served from a
    cache is evaluated through the live model the cache was built from."""
    data = experiment.trainer.eval_data
    if data is None:
        return None, "no eval split (data.eval) to evaluate the teacher on"
    teacher = experiment.teacher
    if teacher is None:
        return None, "no teacher"
    if not getattr(experiment.task, "teacher_evaluable", True):  # e.g. a frozen encoder that feeds the student
        return None, "the teacher is a feature source, not a model of the task's outputs"
    why = "live teacher"
    if experiment.live_teacher is not None and teacher is not experiment.live_teacher:
        teacher, why = experiment.live_teacher, "live teacher (training reads its cache)"
    device = "cuda" if torch.cuda.is_available() and not experiment.trainer.cfg.cpu else "cpu"
    metrics = evaluate_teacher(teacher, experiment.task, data, experiment.trainer.cfg.eval_batch_size, device)
    if metrics is None:
        return None, f"the teacher is a {type(teacher).__name__}, not a model run on the eval inputs"
    return metrics, why


def print_teacher_evaluation(experiment: Any) -> dict[str, float] | None:
    """``distill train``: the teacher's metrics on the eval split, printed once before the first epoch."""
    metrics, why = teacher_evaluation(experiment)
    if metrics is None:
        if experiment.teacher is not None and experiment.trainer.eval_data is not None:  # else nothing to say
            print(f"note: teacher not evaluated before training ({why})", file=sys.stderr)
        return None
    shown = {k: round(float(v), 6) for k, v in metrics.items()}
    print(json.dumps({"teacher_eval": shown, "split": "eval", "teacher": why}), file=sys.stderr)
    return metrics
