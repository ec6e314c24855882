"""Anomaly detection: normal crops in training, anomaly maps scored by image and pixel AUROC.

Batches: ``inputs`` the uint8 crops (B, 1, S, S), ``labels`` the defect masks (B, S, S) (all zero in training).
:meth:`AnomalyDetection.prepare` flips training crops (and blurs them with ``blur``) with randomness from the
trainer's generator, copies the gray channel to 3 and normalises. The model's output is the anomaly map (B, S, S)
(or (B, 1, S, S)); :class:`AnomalyMetrics` scores an image by the largest value of its map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import Batch
from distill.tasks.anomaly.data import AnomalyCrops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).ravel()
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


class AnomalyMetrics:
    """Image AUROC (score = max of the map; label = the mask holds a defect pixel) and pixel AUROC (every pixel of
    every evaluation crop), both from scikit-learn; also the mean map value of normal crops."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        maps = outputs.detach().float()
        if maps.dim() == 4:
            maps = maps[:, 0]
        masks = batch.labels
        assert masks is not None
        if maps.shape[-2:] != masks.shape[-2:]:
            maps = F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        self.maps.append(maps.cpu())
        self.masks.append(masks.cpu().to(torch.uint8))

    def compute(self) -> dict[str, float]:
        maps, masks = torch.cat(self.maps), torch.cat(self.masks)
        labels = masks.flatten(1).amax(1).numpy()
        scores = maps.flatten(1).amax(1).numpy()
        return {"image_auroc": auroc(labels, scores), "pixel_auroc": auroc(masks.numpy(), maps.numpy()),
                "normal_score": float(scores[labels == 0].mean()) if (labels == 0).any() else float("nan")}


class AnomalyDetection:
    """The task adapter of ``task: anomaly_detection`` (see the module docstring)."""

    primary_metric = "image_auroc"
    higher_is_better = True
    #: the teacher is the frozen encoder that feeds the student, not an anomaly detector of its own
    teacher_evaluable = False

    def __init__(self, flip: bool = True, blur: bool = False, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.flip, self.blur = flip, blur
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def describe(self) -> dict[str, str]:
        return {"task": type(self).__name__, "flip": str(self.flip), "blur": str(self.blur)}

    def num_examples(self, data: AnomalyCrops) -> int:
        return len(data)

    def fetch(self, data: AnomalyCrops, indices: torch.Tensor) -> Batch:
        return Batch(inputs=data.images[indices], labels=data.masks[indices], indices=indices, meta={})

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random horizontal and vertical flips (each with probability 1/2 per crop); with ``blur``, a 3-tap
        Gaussian of sigma ~ U(0.1, 2) per crop (torchvision's ``GaussianBlur(3)`` defaults, as DBFAD trains)."""
        n = x.shape[0]
        draws = torch.rand(n, 3, generator=generator).to(x.device)
        if self.flip:
            x = torch.where((draws[:, 0] < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
            x = torch.where((draws[:, 1] < 0.5).view(-1, 1, 1, 1), x.flip(-2), x)
        if self.blur:
            sigma = 0.1 + 1.9 * draws[:, 2]
            taps = torch.exp(-0.5 / sigma[:, None] ** 2 * torch.tensor([1.0, 0.0, 1.0], device=x.device))
            k = taps / taps.sum(1, keepdim=True)  # (n, 3)
            kernel = (k[:, :, None] * k[:, None, :])[:, None]  # (n, 1, 3, 3)
            c = x.shape[1]
            padded = F.pad(x.reshape(1, n * c, *x.shape[-2:]), (1, 1, 1, 1), mode="reflect")
            x = F.conv2d(padded, kernel.repeat_interleave(c, 0), groups=n * c).reshape(x.shape)
        return x

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        x = batch.inputs.float() / 255.0
        if train and (self.flip or self.blur):
            if generator is None:
                raise ValueError("training batches need a generator for their augmentation")
            x = self.augment(x, generator)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return Batch(inputs=x, labels=batch.labels, indices=batch.indices, meta=dict(batch.meta))

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs)

    def new_metrics(self) -> AnomalyMetrics:
        return AnomalyMetrics()
