"""Deprecated import path, kept for one release; use distill.methods.logits.mealv2."""

from distill.methods.logits.mealv2 import (
    WHOLE_MODEL_TAP,
    LogitDiscriminator,
    MealV2,
    discriminator_batch,
    reverse_grad,
    soft_cross_entropy,
)

__all__ = ["LogitDiscriminator", "MealV2", "WHOLE_MODEL_TAP", "discriminator_batch", "reverse_grad",
    "soft_cross_entropy"]
