"""Deprecated import path, kept for one release; use distill.methods.augmentation.mixup,
distill.methods.logits.mixkd, distill.methods.logits.mixstd.
"""

from distill.core.batch import IGNORE_INDEX
from distill.methods.augmentation.mixing import mix_batch, sample_mixing, soft_targets
from distill.methods.augmentation.mixup import Mixup
from distill.methods.logits.mixkd import MixKD
from distill.methods.logits.mixstd import MixSTD, mixstd_loss, std_scaled

UNLABELED = IGNORE_INDEX

__all__ = ["MixKD", "MixSTD", "Mixup", "UNLABELED", "mix_batch", "mixstd_loss", "sample_mixing", "soft_targets",
    "std_scaled"]
