"""The continual runner: trains a :class:`~distill.streams.learners.Learner` task after task on a
:class:`~distill.streams.stream.Stream`, reports the setting's metrics after every task, and resumes exactly.

One loop, no special cases per method: for each task, ``learner.begin_task``, a fresh optimiser over the learner's
trainable parameters, ``epochs_per_task`` passes over the task's training rows in a seeded order (one pass with a
batch of 10 is the online setting), each step ``loss -> backward -> step -> learner.after_step``; then the
evaluation of :meth:`ContinualRunner.evaluate` is appended to ``metrics.json`` in the output folder.

Exact resume: checkpoints are the trainer's (:mod:`distill.train.checkpoint`: atomic, checksummed folders under
``<output_dir>/checkpoints``), written every ``checkpoint_every`` steps and after every task; ``student.safetensors``
holds the learner's whole ``state_dict`` (model, grown branches, teacher snapshots, replay buffer, prototypes),
``optimizer.pt`` the optimiser, ``trainer.pt`` the position (task, epoch, step), the RNG streams and the metrics so
far. The state in a checkpoint always belongs to the structure after ``begin_task(task)``; a resumed run rebuilds
that structure by calling ``begin_task(0..task)`` on a fresh learner and then loads the state, so a run killed
mid-task (SIGKILL) continues with the same batches, the same random draws and bit-identical weights (CPU,
``deterministic: true``).
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill.streams import metrics as M
from distill.streams.learners import Learner, TaskInfo
from distill.streams.stream import Stream
from distill.train.checkpoint import clear_checkpoints, find_checkpoint, rng_state, save_checkpoint, set_rng_state
from distill.train.trainer import ResumeMismatchError, derived_generator, describe_changes, epoch_order, seed_everything

KILL_ENV = "DISTILL_TEST_STREAM_KILL"


def build_optimizer(params: list[torch.nn.Parameter], train: Any) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)


class ContinualRunner:
    """See the module docstring. ``make_learner`` builds a fresh learner (before any task)."""

    def __init__(self, stream: Stream, make_learner: Callable[[], Learner], train: Any, seed: int,
                 output_dir: str | Path, deterministic: bool = True, recipe: dict[str, str] | None = None) -> None:
        self.stream = stream
        #: what a resumed run must agree on (``key: value`` strings, :func:`stream_recipe`); None: not checked
        self.recipe = recipe
        self.make_learner = make_learner
        self.train = train
        self.seed = seed
        self.output_dir = Path(output_dir)
        self.deterministic = deterministic
        self.learner: Learner | None = None

    # ---- structure -------------------------------------------------------------------------------------------
    def task_info(self, t: int) -> TaskInfo:
        return TaskInfo(t, self.stream.kind, tuple(self.stream.seen_classes(t)), tuple(self.stream.tasks[t].classes),
                        self.stream.num_classes)

    def _begin(self, learner: Learner, t: int) -> torch.optim.Optimizer:
        torch.manual_seed(int(derived_generator(self.seed, t, 0xB1).initial_seed()) % (2**63 - 1))
        learner.begin_task(self.task_info(t))
        return build_optimizer(learner.trainable(), self.train)

    # ---- evaluation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, learner: Learner, x: torch.Tensor, fn: str) -> torch.Tensor:
        size = self.train.eval_batch_size
        return torch.cat([getattr(learner, fn)(x[i:i + size]) for i in range(0, len(x), size)])

    def evaluate(self, learner: Learner, t: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The setting's metrics after task t (``history``: the earlier tasks' results, for forgetting)."""
        learner.eval()
        kind = self.stream.kind
        sets = self.stream.eval_sets(t)
        out: dict[str, Any] = {"task": t, "name": self.stream.tasks[t].name}
        if kind == "domains":
            acc = {d: M.accuracy(self._predict(learner, x, "predict").argmax(1), y) for d, (x, y) in sets.items()}
            out["domain_accuracy"] = acc
            trained = [task.domain for task in self.stream.tasks[: t + 1]]
            out["mean_seen_domains"] = float(sum(acc[d] for d in dict.fromkeys(trained)) / len(set(trained)))
            if self.stream.heldout:
                out["mean_heldout_domains"] = float(sum(acc[d] for d in self.stream.heldout) / len(self.stream.heldout))
            return out
        seen = torch.tensor(self.stream.seen_classes(t))
        if kind == "novel_classes":
            known = torch.tensor(self.stream.tasks[0].classes)
            x, y = sets["known"]
            out["known_accuracy"] = M.accuracy(known[self._predict(learner, x, "predict")[:, known].argmax(1)], y)
            if t >= 1:
                x, y = sets["novel"]
                out["novel_clustering_accuracy"] = M.clustering_accuracy(self._predict(learner, x, "discover"), y)
            return out
        per_task, correct, total = {}, 0.0, 0
        for name, (x, y) in sets.items():
            pred = seen[self._predict(learner, x, "predict")[:, seen].argmax(1)]
            per_task[name] = M.accuracy(pred, y)
            correct += float((pred == y).sum())
            total += len(y)
        row = list(per_task.values())
        matrix = [list(h["accuracy"].values()) for h in history] + [row]
        out.update(accuracy=per_task, seen_accuracy=correct / total, average_accuracy=M.average_accuracy(row),
                   forgetting=M.forgetting(matrix))
        return out

    # ---- the loop --------------------------------------------------------------------------------------------
    def _write_metrics(self, results: list[dict[str, Any]]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.output_dir / ".metrics.json.tmp"
        tmp.write_text(json.dumps({"kind": self.stream.kind, "tasks": results}, indent=1) + "\n")
        os.replace(tmp, self.output_dir / "metrics.json")

    def _save(self, learner: Learner, opt: torch.optim.Optimizer, step: int, pos: dict[str, Any]) -> None:
        extra = {"recipe": dict(self.recipe)} if self.recipe is not None else {}
        save_checkpoint(self.output_dir / "checkpoints", step, learner.state_dict(), {}, opt.state_dict(),
                        {**pos, **extra, "rng": rng_state()}, keep=self.train.keep)

    def _check_recipe(self, ckpt: Path, old: dict[str, str] | None) -> None:
        """A checkpoint written with other settings is refused (naming them), never silently continued."""
        if self.recipe is None or old is None:
            return
        changed = sorted(k for k in set(old) | set(self.recipe) if old.get(k) != self.recipe.get(k))
        if changed:
            raise ResumeMismatchError(
                f"the checkpoint {ckpt} was written by a different run ({describe_changes(changed, old, self.recipe)});"
                " resume with the same settings, or start over with --restart or another output_dir")

    def run(self, resume: bool = True, on_task: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train the whole stream (continuing from the newest checkpoint when ``resume``); returns
        ``{"tasks": [metrics after each task]}`` (also in ``<output_dir>/metrics.json``). ``on_task`` is called
        with each task's metrics as soon as they are known (a resumed run's earlier tasks first). A checkpoint
        written with another recipe is refused (:class:`~distill.train.trainer.ResumeMismatchError`)."""
        seed_everything(self.seed, self.deterministic)
        ckdir = self.output_dir / "checkpoints"
        learner = self.make_learner()
        found = find_checkpoint(ckdir) if resume else None
        if not resume:
            clear_checkpoints(ckdir)
        if found is not None:
            ckpt, parts = found
            pos = parts["trainer"]
            self._check_recipe(ckpt, pos.get("recipe"))
            task, epoch, step, gstep = int(pos["task"]), int(pos["epoch"]), int(pos["step"]), int(pos["global_step"])
            results = list(pos["results"])
            for t in range(task + 1 if task < len(self.stream.tasks) else len(self.stream.tasks)):
                opt = self._begin(learner, t)
            learner.load_state_dict(parts["student"], strict=True)
            opt = build_optimizer(learner.trainable(), self.train)
            opt.load_state_dict(parts["optimizer"])
            set_rng_state(pos["rng"])
        else:
            task = epoch = step = gstep = 0
            results = []
            opt = self._begin(learner, 0)
        self.learner = learner
        for row in results if on_task is not None else ():
            on_task(row)
        kill = os.environ.get(KILL_ENV)
        b = self.train.batch_size
        while task < len(self.stream.tasks):
            n = len(self.stream.tasks[task].train_index)
            steps = math.ceil(n / b)
            for ep in range(epoch, self.train.epochs_per_task):
                order = epoch_order(n, self.seed, task * 100_003 + ep)
                for s in range(step if ep == epoch else 0, steps):
                    learner.train()
                    x, y = self.stream.train_batch(task, order[s * b:(s + 1) * b])
                    g = derived_generator(self.seed, task, ep, s)
                    terms = learner.loss(x, y, g)
                    loss = sum(terms.values())
                    opt.zero_grad(set_to_none=True)
                    if isinstance(loss, torch.Tensor) and loss.requires_grad:
                        loss.backward()
                        opt.step()
                    learner.after_step(x, y, g)
                    gstep += 1
                    if kill == f"{task}:{gstep}":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if self.train.checkpoint_every and gstep % self.train.checkpoint_every == 0:
                        self._save(learner, opt, gstep, {"task": task, "epoch": ep, "step": s + 1,
                                                         "global_step": gstep, "results": results})
            epoch = step = 0
            results.append(self.evaluate(learner, task, results))
            self._write_metrics(results)
            if on_task is not None:
                on_task(results[-1])
            task += 1
            if task < len(self.stream.tasks):
                opt = self._begin(learner, task)
            self._save(learner, opt, gstep, {"task": task, "epoch": 0, "step": 0, "global_step": gstep,
                                             "results": results})
        self._write_metrics(results)
        return {"tasks": results}


#: train settings a resumed run may change: they do not change what is trained
RESUMABLE = ("output_dir", "train.keep", "train.checkpoint_every", "train.eval_batch_size")


def stream_recipe(cfg: Any) -> dict[str, str]:
    """What a checkpoint of ``cfg`` (a validated stream config) is tied to: every setting as ``key: value`` JSON
    strings, less where the run is kept and how often it is saved (:data:`RESUMABLE`)."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k in sorted(value, key=str):
                walk(value[k], f"{key}.{k}" if key else str(k))
        elif key not in RESUMABLE:
            out[key] = json.dumps(value, sort_keys=True, default=str)

    walk(cfg.model_dump(mode="json"), "")
    return out


def build_runner(cfg: Any, dataset: Any = None) -> ContinualRunner:
    """The runner of a validated :class:`~distill.streams.section.StreamConfig` (its stream and learner built).
    What only the data can tell (a class the dataset does not have, a learner option that does not fit its images)
    is refused here, before anything trains, as a :class:`~distill.core.errors.ConfigError` naming the key."""
    from distill.core.errors import ConfigError
    from distill.streams.data import load_dataset
    from distill.streams.registry import LEARNERS
    from distill.streams.stream import class_incremental, domain_stream, novel_class_stream

    s = cfg.stream
    if dataset is not None:
        ds = dataset
    else:
        try:
            ds = load_dataset(s.dataset, s.data_seed, s.dataset_options)
        except ConfigError:
            raise
        except (ValueError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if first.split(":")[0] in s.dataset_options:  # the loader names its option: "train_per_class: ..."
                raise ConfigError(f"stream.dataset_options.{first}") from None
            raise ConfigError(f"stream.dataset: {s.dataset!r}: {first}") from None
    cls = LEARNERS[cfg.learner.name]
    try:
        if s.kind == "class_incremental":
            stream = class_incremental(ds, s.tasks, seed=cfg.seed)
        elif s.kind == "domains":
            stream = domain_stream(ds, s.domains, s.heldout, seed=cfg.seed)
        else:
            stream = novel_class_stream(ds, s.known, s.novel, seed=cfg.seed)
        cls.check_data(cfg.learner.options, ds)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    runner = ContinualRunner(stream, lambda: cls(num_classes=stream.num_classes, channels=ds.channels,
                                                 **cfg.learner.options),
                             cfg.train, cfg.seed, cfg.output_dir, cfg.deterministic, recipe=stream_recipe(cfg))
    return runner


def run_config(cfg: Any, resume: bool = True, dataset: Any = None,
               on_task: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Build the stream and learner of a validated :class:`~distill.streams.section.StreamConfig` and run it."""
    return build_runner(cfg, dataset).run(resume=resume, on_task=on_task)
