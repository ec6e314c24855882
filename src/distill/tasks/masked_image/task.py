"""Masked-image pre-training: the task adapter and its metric.

Batches: ``inputs`` the normalised images (B, 3, H, W) (crop + flip in training, as ``task: image_classification``);
``meta["ids_keep"]`` (B, L_vis) and ``meta["ids_restore"]`` (B, L) the one mask that teacher and student share
(DMAE: the mask is drawn once and both encoders see the same visible patches); ``labels`` (B, L, p*p*3 + 1): the
target pixels of each patch (the normalised image, MAE's ``norm_pix_loss`` off as in DMAE's script) with the mask
(1 = hidden) as the last column. A model is called as ``model(x, ids_keep, ids_restore)``: a student MAE returns
its pixel prediction (B, L, p*p*3), a truncated teacher its block output. The metric is the reconstruction MSE on
the hidden patches (lower is better).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.core.batch import Batch
from distill.data.augment import RandomCropFlip
from distill.tasks.image.task import ImageClassification
from distill.tasks.masked_image.data import indexed_masking, random_masking
from distill.tasks.masked_image.models import patchify


class ReconstructionMetrics:
    """Masked-patch MSE over the evaluation set (hidden-patch weighted, as the loss)."""

    def __init__(self) -> None:
        self.sum, self.count = 0.0, 0.0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        labels = batch.labels
        assert labels is not None
        mask = labels[..., -1]
        self.sum += float(((outputs.float() - labels[..., :-1].float()).pow(2).mean(-1) * mask).sum())
        self.count += float(mask.sum())

    def compute(self) -> dict[str, float]:
        return {"recon_mse": self.sum / max(self.count, 1.0)}


class MaskedImageModelling(ImageClassification):
    """The task adapter of ``task: masked_image_pretraining`` (see the module docstring)."""

    primary_metric = "recon_mse"
    higher_is_better = False
    #: the teacher of this family is a truncated encoder, not a reconstruction model of its own
    teacher_evaluable = False

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], augment: RandomCropFlip | None = None,
                 mask_ratio: float = 0.75, patch_size: int = 4, eval_mask_seed: int = 1234):
        super().__init__(mean, std, augment, channels_last=False)
        self.mask_ratio, self.patch_size, self.eval_mask_seed = mask_ratio, patch_size, eval_mask_seed

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "mask_ratio": str(self.mask_ratio), "patch_size": str(self.patch_size)}

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        out = super().prepare(batch, train=train, generator=generator)
        x = out.inputs
        num_patches = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        if train:
            if generator is None:
                raise ValueError("training batches need a generator for their masks")
            ids_keep, ids_restore, mask = random_masking(x.shape[0], num_patches, self.mask_ratio, generator,
                                                         x.device)
        else:
            indices = batch.indices if batch.indices is not None else torch.arange(x.shape[0])
            ids_keep, ids_restore, mask = indexed_masking(indices, num_patches, self.mask_ratio,
                                                          self.eval_mask_seed, x.device)
        labels = torch.cat([patchify(x, self.patch_size), mask[..., None]], dim=-1)
        meta = {**out.meta, "ids_keep": ids_keep, "ids_restore": ids_restore, "class_labels": batch.labels}
        return Batch(inputs=x, labels=labels, indices=out.indices, meta=meta)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.inputs, batch.meta["ids_keep"], batch.meta["ids_restore"])

    def new_metrics(self) -> ReconstructionMetrics:
        return ReconstructionMetrics()
