"""Deprecated import path, kept for one release; use distill.methods.features.reviewkd."""

from distill.methods.features.reviewkd import ABF, ReviewKD, as_map, hcl

__all__ = ["ABF", "ReviewKD", "as_map", "hcl"]
