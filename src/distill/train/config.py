"""The trainer's settings: one dataclass, used by the Python API and validated as the ``train:`` section of a
YAML file (pydantic reads the constraints from the annotations below; unknown keys are refused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, Strict

#: counts are bounded so that a typo (1e30 epochs, a batch of 10**12) is refused rather than run or allocated
MAX_COUNT = 10**9
Positive = Annotated[int, Field(gt=0, le=MAX_COUNT)]
NonNegative = Annotated[int, Field(ge=0, le=MAX_COUNT)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]
#: a switch: true or false only (pydantic would also take "yes", "off" or 1)
Flag = Annotated[bool, Strict()]
#: the experiment trackers Accelerate can log to (``train.trackers``)
Tracker = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"]


@dataclass
class TrainConfig:
    """How the student is trained. ``seed`` and ``deterministic`` are set at the top level of a YAML file."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: Positive = 10
    batch_size: Positive = 64
    eval_batch_size: Positive = 256
    grad_accum: Positive = 1
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: NonNegativeFloat = 0.9
    nesterov: Flag = False
    weight_decay: NonNegativeFloat = 5e-4
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    #: epochs (may be fractional) at which the 'step' schedule multiplies the lr by ``gamma``
    milestones: list[Annotated[float, Field(ge=0, le=MAX_COUNT)]] = field(default_factory=list)
    gamma: PositiveFloat = 0.1
    warmup_epochs: NonNegativeFloat = 0.0
    min_lr_factor: Annotated[float, Field(ge=0, le=1)] = 0.0
    clip_grad_norm: PositiveFloat | None = None
    seed: int = 0
    deterministic: Flag = False
    early_stopping_patience: Positive | None = None
    early_stopping_metric: str | None = None
    early_stopping_min_delta: float = 0.0
    eval_every: Positive = 1
    log_every: Positive = 10
    #: also checkpoint every N optimiser steps (0: at epoch ends only)
    checkpoint_every: NonNegative = 0
    #: also checkpoint after every N-th epoch (and the last); full-batch graph runs take one step per epoch
    checkpoint_every_epochs: NonNegative = 1
    keep_checkpoints: Positive = 2
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: Flag = False
    #: a progress bar on a terminal; off a terminal (nohup, SLURM, CI) a plain line every ``progress_every`` seconds
    progress: Flag = True
    progress_every: PositiveFloat = 10.0
    #: experiment trackers that also receive every logged metric (through Accelerate; see docs/feedback.md)
    trackers: list[Tracker] = field(default_factory=list)
    drop_last: Flag = True
    max_steps: Positive | None = None
    step_delay: NonNegativeFloat = 0.0  # seconds slept after each optimiser step (for crash tests; keep 0)
    # -- several processes (DDP) and speed options; see docs/ddp.md --
    find_unused_parameters: Flag = True  # DDP: tolerate parameters without a gradient in a step (init stages)
    sync_batchnorm: Flag = False  # DDP on GPUs: BatchNorm statistics over the global batch (not on CPU)
    broadcast_buffers: Flag = True  # DDP: copy rank 0's buffers to every rank at each forward
    teacher_inference_mode: Flag = False  # run the teacher under torch.inference_mode (outputs cloned out)
    compile_student: Flag = False  # torch.compile the student (nn.Module.compile; state-dict keys unchanged)
    #: recompute the student's activations in the backward pass instead of keeping them (docs/scale.md)
    gradient_checkpointing: Flag = False
