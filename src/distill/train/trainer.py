"""One trainer for every task and method, on Hugging Face Accelerate.

The loop knows nothing about particular methods: it asks the :class:`DistillModule` for a loss, steps the
optimiser, evaluates, logs and checkpoints. Data order and augmentation are functions of (seed, epoch, step),
so a run resumed from a checkpoint replays exactly the batches and views that an uninterrupted run sees.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.method import EpochContext
from distill.core.outputs import RunInfo
from distill.core.teachers import run_with_taps
from distill.train import distributed, sharding
from distill.train.checkpoint import (
    clear_checkpoints,
    find_checkpoint,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from distill.train.config import TrainConfig
from distill.train.evaluate import eval_batches, evaluate_model
from distill.train.loader import Placed, fetch_batches, fetch_chunk
from distill.train.lock import RunLock
from distill.train.logs import MetricLog
from distill.train.module import DistillModule
from distill.train.progress import Progress, progress_enabled, track
from distill.train.schedules import lr_factor
from distill.train.trackers import TrackedLog, accelerator_kwargs, missing_tracker, start_trackers


def describe_changes(changed: list[str], old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key: old -> new`` for the first four changed keys of a run's recipe, and how many more."""
    detail = ", ".join(f"{k}: {old.get(k, '-')} -> {new.get(k, '-')}" for k in changed[:4])
    return detail + (f", and {len(changed) - 4} more" if len(changed) > 4 else "")


class ResumeMismatchError(ValueError):
    """A checkpoint exists in the run folder but was written with other settings."""


class NonFiniteError(FloatingPointError):
    """A loss term, parameter or buffer became NaN or infinite; ``str(e)`` is one line naming it, the step and the
    epoch. The run stops before the step's state is checkpointed, so the last good checkpoint stays ``latest``."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by a hash of integers (seed, epoch, step, ...)."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (int(k) + 0x9E3779B97F4A7C15 + ((h << 6) & (2**64 - 1)) + (h >> 2))) & (2**64 - 1)
    g = torch.Generator()
    g.manual_seed(h % (2**63 - 1))
    return g


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=derived_generator(seed, epoch, 0x5EED))


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig,
                    overrides: list[tuple[list[nn.Parameter], dict[str, float]]] = ()) -> torch.optim.Optimizer:
    """SGD, AdamW or Adam over ``params``. With AdamW, biases and norm weights get no weight decay (with SGD they do,
    as in the CIFAR reference recipes). ``overrides`` (from methods) give some parameters their own
    ``lr_factor`` and ``weight_decay``."""
    special = {id(p): opts for group, opts in overrides for p in group}
    unknown = set(special) - {id(p) for p in params}
    if unknown:
        raise ValueError(f"{len(unknown)} parameters with optimiser overrides are not trainable parameters")
    groups: list[dict[str, Any]] = []
    plain = [p for p in params if id(p) not in special]
    decay = [p for p in plain if p.ndim > 1]
    no_decay = [p for p in plain if p.ndim <= 1]
    groups += [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": cfg.weight_decay if cfg.optimizer in ("sgd", "adam") else 0.0},
    ]
    for group, opts in overrides:
        unknown_keys = set(opts) - {"lr_factor", "weight_decay"}
        if unknown_keys:
            raise ValueError(f"optimizer overrides accept lr_factor and weight_decay, got {sorted(unknown_keys)}")
        groups.append({"params": list(group), "lr": cfg.lr * float(opts.get("lr_factor", 1.0)),
                       "weight_decay": float(opts.get("weight_decay", cfg.weight_decay))})
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.optimizer == "adam":  # L2 added to the gradient (torch Adam), the GNN literature's optimiser
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; allowed: sgd, adamw, adam")


class Trainer:
    """Train ``student`` with ``methods`` against ``teacher`` on ``train_data``; evaluate on ``eval_data``."""

    def __init__(
        self,
        module: DistillModule,
        train_data: Any,
        eval_data: Any | None,
        config: TrainConfig,
        run_dir: str | Path,
        callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
        val_data: Any | None = None,
        identity: dict[str, str] | None = None,
    ):
        """``identity``: what else a checkpoint must agree on to be resumed (``section.key: value`` strings, e.g.
        :func:`distill.experiment.run_identity` of the config: method options, student, teacher, data)."""
        from accelerate import DistributedDataParallelKwargs

        self.cfg = config
        self.run_dir = Path(run_dir)
        self.module = module
        self.task = module.task
        self.train_data = train_data
        self.eval_data = eval_data
        self.val_data = val_data
        self.callbacks = callbacks or []
        self.identity = dict(identity or {})
        use_cpu = config.cpu or not torch.cuda.is_available()
        precision, note = launcher_precision(config.mixed_precision, use_cpu)
        if precision != config.mixed_precision:
            config = self.cfg = replace(config, mixed_precision=precision)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters,
                                            broadcast_buffers=config.broadcast_buffers)
        missing = missing_tracker(list(config.trackers))
        if missing:
            raise ValueError(missing)
        self.accelerator = self._accelerator(use_cpu, config.mixed_precision, ddp,
                                             **accelerator_kwargs(list(config.trackers), self.run_dir))
        if note and self.accelerator.is_main_process:
            print(note, file=sys.stderr)
        kind = self.accelerator.distributed_type.value
        if kind in ("DEEPSPEED", "MEGATRON_LM"):
            raise ValueError(f"{kind} is not supported by the distill trainer; launch with plain data parallelism "
                             "(accelerate launch --multi_gpu, or torchrun) or FSDP (accelerate launch --use_fsdp "
                             "--fsdp_version 2): see docs/ddp.md and docs/scale.md")
        #: FSDP: the student's and the methods' parameters are sharded across the processes (docs/scale.md)
        self.sharded = kind == "FSDP"
        if self.sharded and not getattr(self.accelerator, "is_fsdp2", False):
            raise ValueError("FSDP version 1 is not supported by the distill trainer (its checkpoints gather "
                             "DTensor shards); launch with --fsdp_version 2 (accelerate config: fsdp_version: 2)")
        if config.gradient_checkpointing:
            from distill.train.recompute import enable_gradient_checkpointing

            try:
                enable_gradient_checkpointing(module.student)
            except ValueError as e:
                raise ValueError(f"train.gradient_checkpointing: {e}") from None
        self.device = self.accelerator.device
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if config.batch_size % self.world:
            raise ValueError(
                f"batch_size {config.batch_size} is the global batch and must divide by the {self.world} processes"
            )
        n = self.task.num_examples(train_data)
        self.micro_per_epoch = n // config.batch_size if config.drop_last else math.ceil(n / config.batch_size)
        if self.micro_per_epoch == 0:
            raise ValueError(f"the training set has {n} examples, fewer than one batch of {config.batch_size}")
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / config.grad_accum)
        self.total_steps = self.steps_per_epoch * config.epochs

    @staticmethod
    def _accelerator(cpu: bool, mixed_precision: str, ddp: Any, **kwargs: Any) -> Any:
        """The run's ``Accelerator`` (FSDP, data parallelism or one process: what the launcher's environment
        says)."""
        from accelerate import Accelerator

        refuse_sharding(cpu)
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=[ddp], **kwargs)

    # -- data -------------------------------------------------------------------------------------------------
    def _chunk(self, order: torch.Tensor, epoch: int, micro: int) -> torch.Tensor | Placed:
        """The examples of micro-batch ``micro`` of ``epoch`` (its slice of ``order``), with the positions the task
        draws for them before they are fetched (``task.draw_positions``, e.g. streamed patch corners: cut in the
        loader worker) from a generator of (seed, epoch, micro) alone, apart from the one ``prepare`` gets."""
        cfg = self.cfg
        idx = order[micro * cfg.batch_size : (micro + 1) * cfg.batch_size]
        draw = getattr(self.task, "draw_positions", None)
        if draw is None:
            return idx
        positions = draw(self.train_data, idx, derived_generator(cfg.seed, epoch, micro, 0xC0E))
        return idx if positions is None else Placed(idx, positions)

    def _epoch_fetches(self, epoch: int, opt_step: int) -> Iterator[Batch]:
        """The raw (fetched, unprepared) micro-batches of ``epoch`` from optimiser step ``opt_step`` on, fetched
        ahead by ``train.num_workers`` worker processes when there are any. The epoch's order and the position
        in it (both saved in checkpoints) say which examples come next, so a resumed run fetches what an
        uninterrupted one would."""
        cfg = self.cfg
        order = epoch_order(self.task.num_examples(self.train_data), cfg.seed, epoch)
        chunks = [self._chunk(order, epoch, micro) for micro in range(opt_step * cfg.grad_accum, self.micro_per_epoch)]
        seed = derived_generator(cfg.seed, epoch, opt_step, 0x10AD).initial_seed()
        return fetch_batches(self.task, self.train_data, chunks, cfg.num_workers, seed)

    def _micro_batches(self, epoch: int, opt_step: int,
                       fetched: Iterator[Batch] | None = None) -> list[tuple[Batch, torch.Generator]]:
        """The prepared micro-batches of one optimiser step, each with the generator its methods may use to
        transform it (mixup and the like); both are functions of (seed, epoch, step) alone. ``fetched``: the
        epoch's raw micro-batches from this step on (:meth:`_epoch_fetches`); by default they are fetched here."""
        cfg = self.cfg
        order = epoch_order(self.task.num_examples(self.train_data), cfg.seed, epoch) if fetched is None else None
        first = opt_step * cfg.grad_accum
        last = min(first + cfg.grad_accum, self.micro_per_epoch)
        batches = []
        for micro in range(first, last):
            gen = derived_generator(cfg.seed, epoch, micro, 0xA06)
            if fetched is None:
                raw = fetch_chunk(self.task, self.train_data, self._chunk(order, epoch, micro))
            else:
                raw = next(fetched)
            raw.meta.setdefault("epoch", epoch)  # lets a task replay per-epoch augmentation (e.g. stored views)
            if self.world == 1:
                prepared = self.task.prepare(raw.to(self.device), train=True, generator=gen)
            else:  # augment the global batch (the views one process would see), then keep this rank's rows
                whole = self.task.prepare(raw, train=True, generator=gen)
                prepared = whole.select(slice(self.rank, None, self.world)).to(self.device)
            batches.append((prepared, derived_generator(cfg.seed, epoch, micro, 0xB17)))
        return batches

    def prepare_methods(self) -> None:
        """Let the methods build their shape-dependent parts from one example batch (before any state is loaded
        into them, and before the optimiser exists)."""
        module = self.module
        n = self.task.num_examples(self.train_data)
        info = RunInfo(num_train_examples=n, epochs=self.cfg.epochs, steps_per_epoch=self.steps_per_epoch,
                       batch_size=self.cfg.batch_size, student=module.student, task=self.task,
                       val_batch=self._val_batch if self.val_data is not None else None)
        module.setup(self._micro_batches(0, 0)[0][0], info)
        module.to(self.device)

    #: settings that may change between a run and its resumption (they do not change what is computed)
    RESUMABLE_CHANGES = ("progress", "max_steps", "step_delay", "checkpoint_every", "keep_checkpoints",
                         "log_every", "eval_every", "eval_batch_size", "progress_every", "trackers",
                         # engine options (float rounding or per-process BatchNorm statistics at most); listing them
                         # here also keeps checkpoints written before these keys existed resumable
                         "find_unused_parameters", "sync_batchnorm", "broadcast_buffers", "teacher_inference_mode",
                         "compile_student", "checkpoint_every_epochs", "gradient_checkpointing", "num_workers")

    def _recipe(self, module: DistillModule) -> dict[str, str]:
        """What a checkpoint must agree on to be resumed: the training settings, the methods and the experiment's
        identity (when given: method options, student, teacher, data)."""
        cfg = {k: v for k, v in asdict(self.cfg).items() if k not in self.RESUMABLE_CHANGES}
        methods = {label: f"{type(m).__name__} x{module.methods.weights[label]}"
                   for label, m in module.methods.methods.items()}
        recipe = {**{k: repr(v) for k, v in cfg.items()}, **{f"method:{k}": v for k, v in methods.items()},
                  "train_examples": str(self.task.num_examples(self.train_data))}
        if self.sharded:  # its optimiser state is keyed and gathered differently
            recipe["sharding"] = "fsdp2"
        identity = getattr(module.teacher, "identity", None)  # teacher sources that can name what they serve
        if callable(identity):
            recipe["teacher"] = identity()
        recipe.update(self.identity)
        return recipe

    def _check_recipe(self, ckpt: Path, old: dict[str, str], new: dict[str, str]) -> None:
        if not old:  # written before checkpoints carried their recipe: nothing to compare
            return
        defaults = _train_config_defaults()
        # a setting the old checkpoint does not know was added to TrainConfig later: at its default it computes
        # what the old code computed, so it is not a change; likewise a file's identity (``key#file``) that an
        # older checkpoint did not record
        # the experiment's identity (keys after the "identity" marker) is compared when both runs carry one: a
        # checkpoint written before it existed, or a Trainer built without one, compares the rest only
        both = "identity" in old and "identity" in new
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                         and not (k not in old and k in defaults and new.get(k) == defaults[k])
                         and not (k not in old and k.endswith("#file"))
                         and (both or not _identity_key(k)))
        if changed:
            raise ResumeMismatchError(
                f"the checkpoint {ckpt} was written by a different run ({describe_changes(changed, old, new)}); "
                "resume with the same settings, "
                f"or start over with --restart (Trainer.fit(resume=False)) or another output_dir"
            )

    def _val_batch(self, step: int, size: int) -> Batch:
        """Batch number ``step`` of size ``size`` from the validation split, cycling through seeded
        permutations of it (a function of the seed and the step only)."""
        n = self.task.num_examples(self.val_data)
        size = min(size, n)
        per_round = max(n // size, 1)
        order = epoch_order(n, self.cfg.seed + 7919, step // per_round)
        start = (step % per_round) * size
        raw = self.task.fetch(self.val_data, order[start:start + size]).to(self.device)
        return self.task.prepare(raw, train=False, generator=None)

    def _eval_batches(self, data: Any):
        return eval_batches(self.task, data, self.cfg.eval_batch_size, self.device, num_workers=self.cfg.num_workers)

    def evaluate(self, model: nn.Module | None = None, data: Any | None = None) -> dict[str, float]:
        """Metrics of ``model`` (default: the student, through any method's inference wrapper) on ``data``
        (default: the evaluation set)."""
        model = model if model is not None else self.accelerator.unwrap_model(self.module).inference_model()
        data = data if data is not None else self.eval_data
        with self._progress_setting(), self._whole():
            return evaluate_model(model, self.task, data, self.cfg.eval_batch_size, self.device,
                                  self.accelerator.autocast, num_workers=self.cfg.num_workers)

    def _whole(self) -> Any:
        """Under FSDP: the student's and methods' whole parameters for calls outside the training forward."""
        return sharding.gathered(self.module) if self.sharded else _nullcontext()

    # -- training ---------------------------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train (resuming from the newest intact checkpoint in ``run_dir/checkpoints`` when ``resume``), holding the
        run folder's lock (``run_dir/.lock``, rank 0 only): a second run on the same folder is refused."""
        with RunLock(self.run_dir, enabled=self.accelerator.is_main_process), self._progress_setting():
            return self._fit(resume)

    def _progress_setting(self) -> Any:
        """Progress of the steps inside training and evaluation (e.g. teacher embeddings) follows ``progress``."""
        return progress_enabled(self.cfg.progress and self.accelerator.is_main_process, self.cfg.progress_every)

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        acc = self.accelerator
        seed_everything(cfg.seed, cfg.deterministic)
        module = self.module
        module.student.to(self.device)
        if module.teacher is not None:
            module.teacher.to(self.device)
        if getattr(self.task, "channels_last", False):
            module.student.to(memory_format=torch.channels_last)
            if module.teacher is not None:
                module.teacher.to(memory_format=torch.channels_last)
        self._convert_batchnorm(module)
        self.prepare_methods()
        module.teacher_inference_mode = cfg.teacher_inference_mode
        ckpt_root = self.run_dir / "checkpoints"
        found = None
        if resume:
            with acc.main_process_first():  # rank 0 settles a leftover .tmp-* folder before the others look
                found = find_checkpoint(ckpt_root, warn=_warn if acc.is_main_process else _quiet)
        elif acc.is_main_process:  # started over: the old run's checkpoints must not be resumed or fallen back to
            clear_checkpoints(ckpt_root)
        ckpt = found[0] if found is not None else None
        if ckpt is None:
            self._teacher_passes(module)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, cfg, module.methods.optimizer_overrides())
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        if self.sharded:
            if getattr(module.student, "_no_split_modules", None):  # FSDP units: the student's layer classes
                module._no_split_modules = list(module.student._no_split_modules)
            sharding.check_wrap_policy(module, acc.state.fsdp_plugin)
        wrapped, optimizer = acc.prepare(module, optimizer)
        params = [p for p in module.parameters() if p.requires_grad]  # under FSDP: the sharded parameters
        if cfg.compile_student:
            module.student.compile()

        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "bad_evals": 0, "stopped": False}
        recipe = self._recipe(module)
        if found is not None:
            ckpt, loaded = found
            self._check_recipe(ckpt, loaded["trainer"].get("recipe", {}), recipe)
            _load_resumed(ckpt, "student", module.student, loaded["student"])
            _load_resumed(ckpt, "methods", module.methods, loaded["methods"])
            sharding.load_full_optimizer_state(optimizer, loaded["optimizer"])
            state.update(loaded["trainer"]["position"])
            set_rng_state(loaded["trainer"]["rng"])
        wall_before = float(state.pop("wall_s", 0.0))  # training time of the sessions before a resume
        log = MetricLog(self.run_dir, resume_step=state["global_step"] if ckpt else None,
                        tensorboard=True) if acc.is_main_process else _NoLog()
        if cfg.trackers and acc.is_main_process:
            start_trackers(acc, cfg, self.run_dir)
            log = TrackedLog(log, acc)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))

        by_design = _non_finite_at_start(module)  # after any resume: what the checkpoint restored counts as start

        def checkpoint() -> None:
            distributed.broadcast_buffers(module)
            _check_state(module, f"step {state['global_step']} (epoch {state['epoch'] + (state['step_in_epoch'] > 0)}"
                                 f", before its checkpoint)", self.world, by_design)
            gather = self.sharded or acc.is_main_process  # gathering shards takes every process
            parts = ((sharding.full_state(module.student), sharding.full_state(module.methods),
                      sharding.full_optimizer_state(optimizer)) if gather else None)
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(
                    ckpt_root,
                    state["global_step"],
                    *parts,
                    {"position": {**state, "wall_s": wall_before + time.perf_counter() - start}, "rng": rng_state(),
                     "recipe": recipe},
                    keep=cfg.keep_checkpoints,
                )

        warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        init_epochs = module.methods.init_epochs
        all_epochs = init_epochs + cfg.epochs
        init_steps = init_epochs * self.steps_per_epoch
        metric_name = cfg.early_stopping_metric or self.task.primary_metric
        start = time.perf_counter()
        progress = Progress("training", self.total_steps + init_steps, done=state["global_step"],
                            enabled=cfg.progress and acc.is_main_process, every=cfg.progress_every)
        history: list[dict[str, Any]] = []
        try:
            while state["epoch"] < all_epochs and not state["stopped"]:
                epoch = state["epoch"]
                stage = "init" if epoch < init_epochs else "main"
                module.train()
                epoch_start = time.perf_counter()
                fetched = self._epoch_fetches(epoch, state["step_in_epoch"])
                while state["step_in_epoch"] < self.steps_per_epoch:
                    if cfg.max_steps is not None and state["global_step"] >= cfg.max_steps:
                        state["stopped"] = True
                        break
                    step = state["global_step"] - init_steps  # main-stage step (negative while initialising)
                    factor = 1.0 if stage == "init" else lr_factor(
                        cfg.schedule, step, self.steps_per_epoch, self.total_steps, cfg.milestones, cfg.gamma,
                        warmup, cfg.min_lr_factor)
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * factor
                    micro = self._micro_batches(epoch, state["step_in_epoch"], fetched)
                    with acc.autocast():  # the methods' own batches (mixup, on-policy samples) before counting
                        micro = [module.transform(batch, batch_gen) for batch, batch_gen in micro]
                    num_tokens = self._tokens_per_micro_batch(micro)
                    sums: dict[str, float] = {}
                    for i, batch in enumerate(micro):
                        sync = i == len(micro) - 1
                        ctx = acc.no_sync(wrapped) if not sync else _nullcontext()
                        with ctx, acc.autocast():
                            loss, terms, _ = wrapped(batch, progress=max(step, 0) / self.total_steps,
                                                     epoch=epoch - init_epochs if stage == "main" else epoch,
                                                     step=step, stage=stage, num_tokens=num_tokens)
                            acc.backward(loss / len(micro))
                        for k, v in terms.items():
                            sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(micro)
                        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / len(micro)
                    if self.world > 1:  # the logged loss is the global batch's; every rank sees a NaN
                        sums = _mean_across_ranks(sums, self.device)
                    where = self._where(state, epoch, init_epochs)
                    _check_terms(sums, where)
                    if cfg.clip_grad_norm:
                        acc.clip_grad_norm_(params, cfg.clip_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    _check_state(module, where, self.world, by_design)  # parameters and buffers (BatchNorm statistics)
                    state["step_in_epoch"] += 1
                    state["global_step"] += 1
                    last = state["global_step"] == self.total_steps + init_steps  # short runs log too
                    if acc.is_main_process and (state["global_step"] % cfg.log_every == 0 or last):
                        log.log(state["global_step"], epoch, stage if stage == "init" else "train",
                                {**sums, "lr": cfg.lr * factor})
                    label = (f"init {epoch + 1}/{init_epochs}" if stage == "init"
                             else f"epoch {epoch + 1 - init_epochs}/{cfg.epochs}")
                    progress.update(1, f"{label} loss {sums['loss']:.4f}")
                    if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
                        checkpoint()
                    if cfg.step_delay:
                        time.sleep(cfg.step_delay)
                fetched.close()
                if state["stopped"]:
                    break
                epoch_time = time.perf_counter() - epoch_start
                main_epoch = epoch + 1 - init_epochs
                record: dict[str, Any] = {"epoch": main_epoch, "stage": stage, "step": state["global_step"],
                                          "epoch_time": epoch_time}
                distributed.broadcast_buffers(module)  # BatchNorm statistics: rank 0's, on every rank
                if stage == "main":
                    module.methods.after_epoch(self._epoch_context(module, main_epoch))
                if self.eval_data is not None and stage == "main" and (
                        main_epoch % cfg.eval_every == 0 or main_epoch == cfg.epochs):
                    metrics = self.evaluate()
                    record.update(metrics)
                    if acc.is_main_process:
                        log.log(state["global_step"], main_epoch, "eval", {**metrics, "epoch_time": epoch_time})
                    progress.note(f"epoch {main_epoch}/{cfg.epochs}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float)))
                    self._early_stopping(state, metrics, metric_name, module)
                history.append(record)
                for cb in self.callbacks:
                    cb(record)
                state["epoch"] += 1
                state["step_in_epoch"] = 0
                every = cfg.checkpoint_every_epochs
                if every and (state["epoch"] % every == 0 or state["stopped"] or state["epoch"] == all_epochs):
                    checkpoint()
        finally:
            progress.close()
            log.close()
        wall = wall_before + time.perf_counter() - start
        distributed.broadcast_buffers(module)
        if self.sharded or acc.is_main_process:
            student_state, methods_state = sharding.full_state(module.student), sharding.full_state(module.methods)
        if acc.is_main_process:
            save_weights(self.run_dir / "student.safetensors", student_state)
            if methods_state:  # heads, projectors and state an inference wrapper may need
                save_weights(self.run_dir / "methods.safetensors", methods_state)
        final = self.evaluate() if self.eval_data is not None else {}
        summary = {"final": final, "best": state["best"], "steps": state["global_step"],
                   "epochs_done": state["epoch"], "wall_time_s": wall, "history": history}
        if acc.is_main_process:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _tokens_per_micro_batch(self, micro: list[Batch]) -> float | None:
        """The mean number of loss-bearing tokens per micro-batch of one optimiser step, over its micro-batches and
        every process (``task.loss_tokens``; None for tasks that do not count tokens). Token-mean losses divide
        their sums by it: the trainer divides each micro-batch's loss by their number and DDP averages over the
        processes, so the step's gradient is that of the sum over all tokens divided by their total count."""
        count = getattr(self.task, "loss_tokens", None)
        if count is None or not micro:
            return None
        total = torch.tensor([float(sum(int(count(b)) for b in micro))], dtype=torch.float64, device=self.device)
        if self.world > 1:
            distributed.all_reduce_mean(total)
        return float(total) / len(micro)

    @staticmethod
    def _where(state: dict[str, Any], epoch: int, init_epochs: int) -> str:
        """``step N (epoch E)`` of the optimiser step being taken (both counted from 1, as checkpoints are)."""
        if epoch < init_epochs:
            return f"step {state['global_step'] + 1} (init epoch {epoch + 1})"
        return f"step {state['global_step'] + 1} (epoch {epoch + 1 - init_epochs})"

    def _convert_batchnorm(self, module: DistillModule) -> None:
        if not (self.cfg.sync_batchnorm and self.world > 1):
            return
        if self.device.type == "cpu":
            raise ValueError("train.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only; on CPU use a student "
                             "without BatchNorm or leave it off (each process then normalises its own shard)")
        module.student = nn.SyncBatchNorm.convert_sync_batchnorm(module.student)

    def _epoch_context(self, module: DistillModule, epoch: int) -> EpochContext:
        data = {"val": self.val_data, "eval": self.eval_data}
        splits = tuple(k for k, v in data.items() if v is not None)

        def pick(split: str) -> Any:
            if data.get(split) is None:
                raise ValueError(f"no {split!r} split in this run; available: {list(splits)}")
            return data[split]

        @torch.no_grad()
        def student_outputs(split: str, taps: list[str]):
            student = module.student
            was_training = student.training
            student.eval()
            try:
                with self._whole():
                    for batch in self._eval_batches(pick(split)):
                        yield batch, run_with_taps(student, self.task, batch, taps)
            finally:
                student.train(was_training)

        @torch.no_grad()
        def teacher_outputs(split: str, taps: list[str]):
            if module.teacher is None:
                raise ValueError("this run has no teacher")
            for batch in self._eval_batches(pick(split)):
                yield batch, module.teacher(batch, self.task, taps)

        return EpochContext(epoch, splits, student_outputs, teacher_outputs)

    def _teacher_passes(self, module: DistillModule) -> None:
        """Give each method that asks for it one pass of teacher outputs over the (unaugmented) training set,
        before training, e.g. to compute class means of teacher features. A resumed run skips this: the
        results live in the methods' buffers, which the checkpoint restores."""
        for method in module.methods.methods.values():
            if not method.wants_teacher_pass:
                continue
            if module.teacher is None:
                raise ValueError(f"{type(method).__name__} needs a pass of the teacher, but none is configured")
            taps = method.teacher_taps()

            def outputs(taps: list[str] = taps, name: str = type(method).__name__):
                batches = track(self._eval_batches(self.train_data), f"teacher pass ({name})",
                                total=self.task.num_examples(self.train_data), size=len,
                                enabled=self.cfg.progress and self.accelerator.is_main_process,
                                every=self.cfg.progress_every)
                with torch.no_grad():
                    for batch in batches:
                        yield batch, module.teacher(batch, self.task, taps)

            method.teacher_pass(outputs())

    def _early_stopping(self, state: dict[str, Any], metrics: dict[str, float], name: str,
                        module: DistillModule) -> None:
        if name not in metrics:
            raise KeyError(f"early-stopping metric {name!r} is not among the metrics {sorted(metrics)}")
        value = metrics[name]
        higher = self.task.higher_is_better if name == self.task.primary_metric else name != "loss"
        sign = 1.0 if higher else -1.0
        better = state["best"] is None or sign * (value - state["best"]) > self.cfg.early_stopping_min_delta
        if better:
            state["best"] = value
            state["bad_evals"] = 0
            if self.sharded or self.accelerator.is_main_process:
                best = sharding.full_state(module.student)
            if self.accelerator.is_main_process:
                save_weights(self.run_dir / "best" / "student.safetensors", best)
        else:
            state["bad_evals"] += 1
            patience = self.cfg.early_stopping_patience
            if patience is not None and state["bad_evals"] >= patience:
                state["stopped"] = True


#: what ``accelerate launch --mixed_precision`` and ``accelerate config`` put in the environment
LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"


def launcher_precision(configured: str, cpu: bool) -> tuple[str, str | None]:
    """The autocast precision of the run and a note to print when the launcher decided it.

    ``accelerate launch --mixed_precision X`` sets ``ACCELERATE_MIXED_PRECISION``; an explicit ``Accelerator``
    argument would silently override it. Here the launcher's request is followed when ``train.mixed_precision`` is
    left at ``no`` (with a note), the config's value is kept when the launcher says ``no`` (its default), and two
    different precisions are refused with a ``ValueError`` naming both."""
    asked = os.environ.get(LAUNCHER_PRECISION, "").strip().lower()
    if not asked or asked == configured:
        return configured, None
    if asked not in ("no", "bf16", "fp16"):
        raise ValueError(f"{LAUNCHER_PRECISION}={asked} (from accelerate launch --mixed_precision): this trainer "
                         "autocasts to no, bf16 or fp16 (train.mixed_precision)")
    if asked == "no":
        return configured, None
    if configured != "no":
        raise ValueError(f"train.mixed_precision is {configured} but the launcher asks for {asked} "
                         f"(accelerate launch --mixed_precision {asked}, {LAUNCHER_PRECISION}); make them agree")
    if asked == "fp16" and cpu:
        raise ValueError(f"train.mixed_precision: the launcher asks for fp16 ({LAUNCHER_PRECISION}), which needs a "
                         "GPU; launch with --mixed_precision bf16 or no on CPUs")
    return asked, (f"note: train.mixed_precision follows the launcher: {asked} ({LAUNCHER_PRECISION}; the config "
                   "says no)")


def refuse_sharding(cpu: bool) -> None:
    """Accelerate 1.16 turns ``ACCELERATE_USE_FSDP`` into FSDP only on accelerators: on CPUs it silently runs plain
    data parallelism instead. Refuse that, so a run asked to shard is never quietly replicated."""
    if cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ValueError("FSDP (accelerate launch --use_fsdp, ACCELERATE_USE_FSDP) shards over GPUs only: Accelerate "
                         "runs CPU processes as plain data parallelism; drop --use_fsdp on CPUs (see docs/scale.md)")


def _load_resumed(ckpt: Path, part: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's ``part`` into ``model``; a tensor of another shape, or a missing or extra one (a student
    or method built differently from the run that wrote it) is a one-line :class:`ResumeMismatchError`."""
    current = model.state_dict()
    problem = None
    for name, tensor in current.items():  # in the model's order: its first tensor that differs
        if name in state and tuple(tensor.shape) != tuple(state[name].shape):
            problem = (f"{part}.{name} is {list(state[name].shape)} in the checkpoint but {list(tensor.shape)} "
                       "in this run")
            break
    if problem is None:
        missing = [k for k in current if k not in state]
        extra = [k for k in state if k not in current]
        if missing or extra:
            problem = (f"{part}.{missing[0]} is missing from the checkpoint" if missing
                       else f"the checkpoint has {part}.{extra[0]}, which this run does not")
    if problem is None:
        try:
            sharding.load_full_state(model, state)
            return
        except RuntimeError as e:
            problem = f"{part}: {str(e).strip().splitlines()[-1].strip()}"
    raise ResumeMismatchError(
        f"the checkpoint {ckpt} does not fit this run's model ({problem}): it was written by a different run; "
        "resume with the same settings, or start over with --restart (Trainer.fit(resume=False)) or another output_dir"
    )


def _identity_key(key: str) -> bool:
    """A recipe key from the experiment's identity (see ``Trainer(identity=...)``), not the trainer's own."""
    return key == "identity" or key.startswith(("methods[", "student.", "teacher.", "data."))


def _train_config_defaults() -> dict[str, str]:
    """``repr`` of every TrainConfig field's default, as recipes store them."""
    out = {}
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            out[f.name] = repr(f.default)
        elif f.default_factory is not MISSING:
            out[f.name] = repr(f.default_factory())
    return out


def _check_terms(sums: dict[str, float], where: str) -> None:
    """Stop on a non-finite loss, naming the first non-finite term (or the total when every term is finite)."""
    if math.isfinite(sums["loss"]) and all(math.isfinite(v) for v in sums.values()):
        return
    bad = [k for k, v in sums.items() if k != "loss" and not math.isfinite(v)]
    what = f"loss term {bad[0]!r} ({sums[bad[0]]})" if bad else f"total loss ({sums['loss']}; every term is finite)"
    raise NonFiniteError(f"non-finite {what} at {where}; the run stopped and the last good checkpoint is kept "
                         "(lower the learning rate, or clip gradients: train.clip_grad_norm)")


def _state_tensors(module: DistillModule):
    for prefix, part in (("student", module.student), ("methods", module.methods)):
        for name, t in part.named_parameters():
            yield f"{prefix}.{name}", sharding.local(t)
        for name, t in part.named_buffers():
            yield f"{prefix}.{name}", sharding.local(t)


@torch.no_grad()
def _check_state(module: DistillModule, where: str, world: int = 1, ignore: frozenset[str] = frozenset()) -> None:
    """Stop when a trainable parameter or a buffer of the student or the methods holds a NaN or an infinity (one
    device sync: the sum of all of them is checked first, each tensor only when that sum is not finite). With
    several processes the sums are averaged first, so every rank stops together. ``ignore``: tensors that held
    non-finite values before training (e.g. a mask buffer of -inf), see :func:`_non_finite_at_start`."""
    tensors = [(n, t) for n, t in _state_tensors(module) if t.is_floating_point() and t.numel() and n not in ignore]
    if not tensors and world == 1:
        return
    device = tensors[0][1].device if tensors else torch.device("cpu")
    total = torch.stack([t.detach().float().sum() for _, t in tensors]).sum() if tensors else \
        torch.zeros((), device=device)
    if world > 1:
        total = total.double().reshape(1)
        distributed.all_reduce_mean(total)
    if bool(torch.isfinite(total).all()):
        return
    if world > 1 and all(bool(torch.isfinite(t).all()) for _, t in tensors):
        raise NonFiniteError(f"non-finite parameters or buffers on another process at {where}; the run stopped")
    for name, t in tensors:
        if not bool(torch.isfinite(t).all()):
            kind = "buffer" if not isinstance(t, nn.Parameter) else "parameter"
            raise NonFiniteError(f"non-finite {kind} {name!r} at {where}; the run stopped and the last good "
                                 "checkpoint is kept (lower the learning rate, or clip gradients: "
                                 "train.clip_grad_norm)")


@torch.no_grad()
def _non_finite_at_start(module: DistillModule) -> frozenset[str]:
    """Names of the student's and methods' tensors that hold NaN or inf before any step (by design: masks)."""
    return frozenset(n for n, t in _state_tensors(module)
                     if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _quiet(message: str) -> None:
    return None


def _mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    distributed.all_reduce_mean(t)
    return dict(zip(keys, t.tolist()))


class _NoLog:
    """The metric log of a rank other than 0: writes nothing."""

    def log(self, *args: object, **kwargs: object) -> None:
        return None

    def close(self) -> None:
        return None


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
