"""The training loop, checkpoints and logs."""

from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

__all__ = ["DistillModule", "TrainConfig", "Trainer"]
