"""Batch augmentations registered as methods (family ``augmentation``): one module per method; the mixing
utilities are in :mod:`distill.methods.augmentation.mixing`."""
