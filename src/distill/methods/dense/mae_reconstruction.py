"""MAE's masked reconstruction loss (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
arXiv:2111.06377; ``forward_loss`` of github.com/facebookresearch/mae ``models_mae.py``, kept as is by DMAE):

    L_rec = sum_{masked patches i} mean_pixels (x^_i - x_i)^2 / #masked patches

The targets are the normalised pixels of each patch (``norm_pix_loss`` off, as in DMAE's released script); the
task (``task: masked_image_pretraining``) puts them and the mask in the batch's labels (B, L, p*p*3 + 1)."""

from __future__ import annotations

import torch

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_labels


def masked_patch_mse(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MAE's loss: sum over hidden patches of the mean squared pixel error, divided by the number of hidden patches.
    ``labels`` (B, L, D + 1) holds the targets and the mask (last column)."""
    target, mask = labels[..., :-1], labels[..., -1]
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


@register_method("mae_reconstruction", family="dense",
                 paper="Masked Autoencoders Are Scalable Vision Learners", year=2022, arxiv="2111.06377",
                 venue="CVPR", repo="https://github.com/facebookresearch/mae", aliases=("mae",))
class MAEReconstruction(Method):
    """Masked-patch pixel MSE: the mean over hidden patches of each patch's mean squared pixel error."""

    tasks = frozenset({"masked_image_pretraining"})
    needs_teacher = False
    needs_labels = True

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        labels = require_labels(inputs, "mae_reconstruction")
        pred = inputs.student.logits
        if pred.shape[:-1] != labels.shape[:-1] or pred.shape[-1] + 1 != labels.shape[-1]:
            raise ValueError(f"mae_reconstruction: the student's prediction {tuple(pred.shape)} does not fit the "
                             f"targets + mask {tuple(labels.shape)} (is the student an MAE with a decoder?)")
        return {"loss": masked_patch_mse(pred, labels)}
