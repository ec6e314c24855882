"""Deprecated import path, kept for one release; use distill.methods.logits.pld."""

from distill.methods.logits.pld import PLD, Weighting, pld_loss, teacher_optimal_permutation

__all__ = ["PLD", "Weighting", "pld_loss", "teacher_optimal_permutation"]
