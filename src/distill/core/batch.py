"""One batch as the trainer hands it to tasks, teachers and methods."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

#: The label of an example (or token) that no supervised loss sees: unlabelled images and graph nodes, prompt and
#: padding tokens. The one definition in the package; PyTorch's ``cross_entropy`` ignores it by default.
IGNORE_INDEX = -100


@dataclass
class Batch:
    """Model inputs, labels and the dataset indices they came from.

    ``indices`` let a teacher cache look up stored outputs; ``meta`` carries task-specific extras
    (for example the augmentation parameters that produced these views).
    """

    inputs: Any
    labels: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        def move(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return replace(
            self,
            inputs=move(self.inputs),
            labels=move(self.labels),
            indices=move(self.indices),
            meta=move(self.meta),
        )

    def __len__(self) -> int:
        if isinstance(self.inputs, torch.Tensor):
            return int(self.inputs.shape[0])
        if isinstance(self.inputs, dict):
            return int(next(iter(self.inputs.values())).shape[0])
        raise TypeError("cannot infer the batch size")

    def select(self, rows: torch.Tensor | slice) -> Batch:
        """The batch restricted to ``rows`` (an index tensor or a slice of the first dimension): inputs, labels,
        indices and every ``meta`` tensor with one row per example (e.g. augmentation parameters)."""
        n = len(self)

        def pick(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == n:
                return x[rows]
            if isinstance(x, dict):
                return {k: pick(v) for k, v in x.items()}
            return x

        return replace(self, inputs=pick(self.inputs), labels=pick(self.labels), indices=pick(self.indices),
                       meta=pick(self.meta))
