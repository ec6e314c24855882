"""Semantic segmentation: uint8 images in memory, per-pixel class logits (B, K, H, W), mean IoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import Batch
from distill.core.iou import confusion_matrix, mean_iou
from distill.data.augment import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Normalize
from distill.data.image_files import cut, draw_corners
from distill.tasks.segmentation.data import IGNORE_INDEX, SegmentationArrays, StreamedMasks


def normalize_stats(spec: object) -> tuple[Sequence[float], Sequence[float]]:
    """The mean and std of a ``normalize`` setting (``imagenet``, ``cifar10`` or explicit)."""
    if spec == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if spec == "cifar10":
        return CIFAR10_MEAN, CIFAR10_STD
    return spec.mean, spec.std  # type: ignore[attr-defined]


class SegmentationMetrics:
    """Running confusion matrix: ``miou``, pixel ``accuracy`` and the mean per-pixel cross-entropy ``loss``."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.loss_sum = 0.0
        self.n = 0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        labels = batch.labels
        assert labels is not None
        outputs = outputs.float()
        self.confusion += confusion_matrix(outputs, labels, self.num_classes)
        self.loss_sum += float(F.cross_entropy(outputs, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
        self.n += int((labels != IGNORE_INDEX).sum())

    def compute(self) -> dict[str, float]:
        miou, _ = mean_iou(self.confusion)
        total = int(self.confusion.sum())
        acc = float(self.confusion.diag().sum()) / total if total else 0.0
        return {"miou": miou, "accuracy": acc, "loss": self.loss_sum / max(self.n, 1)}


class SemanticSegmentation:
    """Segment images held as uint8 tensors (a :class:`SegmentationArrays`): the model maps a normalised batch
    (B, 3, H, W) to logits (B, K, H, W); labels are (B, H, W) with ``IGNORE_INDEX`` (-100) for unlabelled pixels.
    Inputs are not augmented, so a teacher cache stores one view per image."""

    primary_metric = "miou"
    higher_is_better = True
    augment = None

    def __init__(self, mean: Sequence[float], std: Sequence[float], num_classes: int, channels_last: bool = False,
                 crop_size: int | None = None, resize: str | None = None):
        self.normalize = Normalize(mean, std)
        self.num_classes = int(num_classes)
        self.channels_last = channels_last
        self.crop_size = crop_size
        self.resize = resize  # data.resize when data.image_size resizes (a streamed set's fingerprint skips it)

    def describe(self) -> dict[str, str]:
        """How stored images become model inputs (part of a teacher cache's fingerprint)."""
        out = {"task": type(self).__name__, "normalize": repr(self.normalize), "classes": str(self.num_classes)}
        if self.crop_size is not None:
            out["crop"] = str(self.crop_size)
        if self.resize not in (None, "stretch"):  # stretch: what caches built before data.resize hold
            out["resize"] = str(self.resize)
        return out

    def num_examples(self, data: SegmentationArrays | StreamedMasks) -> int:
        return len(data)

    def image_sizes(self, data: SegmentationArrays | StreamedMasks, indices: torch.Tensor) -> torch.Tensor:
        """(N, 2) the (H, W) of the images at ``indices`` (resized; without any padding)."""
        if isinstance(data, StreamedMasks):
            return torch.tensor([data.sizes[k] for k in indices.tolist()], dtype=torch.int64).reshape(-1, 2)
        if data.sizes is not None:
            return data.sizes[indices]
        return torch.tensor([list(data.images.shape[-2:])] * len(indices), dtype=torch.int64).reshape(-1, 2)

    def draw_positions(self, data: SegmentationArrays | StreamedMasks, indices: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor | None:
        """With ``crop_size``, before a training batch is fetched (by the trainer, from a generator of the seed,
        epoch and step): the (N, 2) top-left corners of the images' random crops, uniform over the positions
        inside each image, so the fetch (a loader worker's, streamed) cuts them and only the crops leave it."""
        if self.crop_size is None:
            return None
        return draw_corners(self.image_sizes(data, indices), self.crop_size, generator)

    def fetch(self, data: SegmentationArrays | StreamedMasks, indices: torch.Tensor,
              positions: torch.Tensor | None = None) -> Batch:
        """The images and masks at ``indices``; with ``positions`` (:meth:`draw_positions`) their ``crop_size``
        crops at those corners (``meta["corners"]``)."""
        if positions is not None:
            return self._fetch_crops(data, indices, positions)
        if isinstance(data, StreamedMasks):  # data.streaming: decoded now (in a loader worker, if any)
            return data.fetch(indices)
        if data.sizes is not None:  # images of several sizes, padded: keep the batch's largest, and the sizes
            sizes = data.sizes[indices]
            h, w = (int(v) for v in sizes.max(0).values) if len(sizes) else (0, 0)
            return Batch(inputs=data.images[indices, :, :h, :w], labels=data.masks[indices, :h, :w],
                         indices=indices, meta={"sizes": sizes})
        return Batch(inputs=data.images[indices], labels=data.masks[indices], indices=indices, meta={})

    def _fetch_crops(self, data: SegmentationArrays | StreamedMasks, indices: torch.Tensor,
                     corners: torch.Tensor) -> Batch:
        if self.crop_size is None:
            raise ValueError("positions are drawn for training crops only (data.crop_size)")
        c = int(self.crop_size)
        corners = corners.long().cpu().reshape(-1, 2)
        sizes = self.image_sizes(data, indices)
        if corners.shape[0] != len(indices):
            raise ValueError(f"{len(indices)} indices but {corners.shape[0]} positions")
        if bool(((corners < 0) | (corners > sizes - c)).any()):
            row = int(((corners < 0) | (corners > sizes - c)).any(1).nonzero()[0])
            raise ValueError(f"corner {tuple(corners[row].tolist())} of a {c}-pixel crop is outside image "
                             f"{int(indices[row])} ({int(sizes[row, 0])} x {int(sizes[row, 1])})")
        xs, ys = [], []
        for k, (top, left) in zip(indices.tolist(), corners.tolist(), strict=True):
            if isinstance(data, StreamedMasks):  # decoded, cut, and let go before the next image
                x, y = data.read(k)
            else:
                x, y = data.images[k], data.masks[k]
            xs.append(x[:, top:top + c, left:left + c].clone())
            ys.append(y[top:top + c, left:left + c].clone())
        empty = len(xs) == 0
        images = torch.stack(xs) if not empty else torch.zeros((0, 3, c, c), dtype=torch.uint8)
        masks = torch.stack(ys) if not empty else torch.zeros((0, c, c), dtype=torch.int64)
        return Batch(inputs=images, labels=masks, indices=indices, meta={"corners": corners})

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        """Normalise. A training batch the trainer fetched arrives cut (its corners drawn by
        :meth:`draw_positions`, in ``meta["corners"]``). Otherwise, with ``crop_size``, a training batch (and a
        streamed batch of whole images, ``meta["uncut"]``) first gets one ``crop_size`` square per image, the same
        for its mask, the corner drawn from ``generator`` and kept in ``meta["corners"]`` (centred outside
        training). The corners lie inside each image's own size (``meta["sizes"]``: in-memory images of several
        sizes, padded); an evaluation batch of padded images stays whole, its padding labelled ``IGNORE_INDEX``
        (not scored)."""
        meta = dict(batch.meta)
        x, y = batch.inputs, batch.labels
        own = meta.pop("sizes", None)
        if "corners" not in meta and ("uncut" in meta or (train and self.crop_size is not None)):
            size = int(meta.pop("patch", self.crop_size))
            sizes = meta.pop("uncut", own)
            if sizes is None:  # in memory: every image of the batch has the batch's size
                sizes = torch.tensor([list(x.shape[-2:])] * x.shape[0], dtype=torch.int64)
            corners = draw_corners(sizes, size, generator if train else None)
            x = cut(x, corners, size)
            y = cut(y, corners, size) if y is not None else None
            meta["corners"] = corners
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(inputs=x, labels=y, indices=batch.indices, meta=meta)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs)

    def new_metrics(self) -> SegmentationMetrics:
        return SegmentationMetrics(self.num_classes)
