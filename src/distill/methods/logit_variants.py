"""Deprecated import path, kept for one release; use distill.methods.logits.dist, distill.methods.logits.dkd,
distill.methods.logits.lskd.
"""

from distill.methods.logits.dist import DIST, dist_relations, pearson_rows
from distill.methods.logits.dkd import DKD, dkd_terms, dkd_warmup_factor
from distill.methods.logits.losses import standardize_logits
from distill.methods.logits.lskd import LogitStandardizedKD

__all__ = ["DIST", "DKD", "LogitStandardizedKD", "dist_relations", "dkd_terms", "dkd_warmup_factor", "pearson_rows",
    "standardize_logits"]
