"""Image classification: uint8 images in memory, batch augmentation with explicit randomness, top-k accuracy."""

from __future__ import annotations

import torch
from torch import nn

from distill.core.batch import Batch
from distill.data.augment import AugmentParamsSource, Normalize, RandomCropFlip, batch_augment_params
from distill.data.images import ImageArrays
from distill.tasks.metrics import ClassificationMetrics, classification_metric_names


class ImageClassification:
    """Classify images held as uint8 tensors (an :class:`~distill.data.images.ImageArrays`).

    Training batches are augmented on whatever device they live on, with randomness drawn from the
    generator the trainer passes in (derived from the seed, epoch and step), so a resumed run sees exactly
    the views an uninterrupted run would. The augmentation parameters are kept in ``batch.meta["augment"]``.

    Replay: parameters already in ``batch.meta["augment"]`` are applied as they are; otherwise, with an
    ``augment_source`` (e.g. a teacher cache holding K stored views per example), the parameters come from
    ``augment_source.augment_params(batch.indices, batch.meta["epoch"])`` and the view ids go to
    ``batch.meta["view"]``; otherwise they are drawn from the generator.
    """

    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: RandomCropFlip | None = None,
        channels_last: bool = False,
        augment_source: AugmentParamsSource | None = None,
    ):
        self.normalize = Normalize(mean, std)
        self.augment = augment
        self.channels_last = channels_last
        self.augment_source = augment_source

    def describe(self) -> dict[str, str]:
        """How stored images become model inputs (part of a teacher cache's fingerprint)."""
        return {"task": type(self).__name__, "normalize": repr(self.normalize), "augment": repr(self.augment)}

    def num_examples(self, data: ImageArrays) -> int:
        return len(data)

    def fetch(self, data: ImageArrays, indices: torch.Tensor) -> Batch:
        routes = getattr(data, "routes", None)  # each image's mixture member (teacher.mixture, route: column)
        meta = {"route": routes[indices]} if routes is not None else {}
        return Batch(inputs=data.images[indices], labels=data.labels[indices], indices=indices, meta=meta)

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        images = batch.inputs
        meta = dict(batch.meta)
        if train and self.augment is not None:
            params = batch_augment_params(self.augment, self.augment_source, meta, batch.indices, images.shape[0],
                                          generator, images.device)
            images = self.augment.apply(images, params)
        x = self.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(inputs=x, labels=batch.labels, indices=batch.indices, meta=meta)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs)

    def new_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics()

    def metric_names(self, num_outputs: int | None) -> tuple[str, ...]:
        """The keys :meth:`new_metrics` reports for a model with ``num_outputs`` logits (``top5`` only above 5)."""
        return classification_metric_names(num_outputs)
