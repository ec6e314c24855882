"""Deprecated import path, kept for one release; use distill.methods.logits.lsf_idm."""

from distill.methods.logits.lsf_idm import LSFIDM, fused_target

__all__ = ["LSFIDM", "fused_target"]
