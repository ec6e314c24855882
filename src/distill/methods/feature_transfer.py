"""Deprecated import path, kept for one release; use distill.methods.features.ab, distill.methods.features.fsp,
distill.methods.features.ft, distill.methods.features.nst, distill.methods.features.vid.
"""

from distill.methods.features.ab import ActivationBoundaries, ab_connector, ab_hinge
from distill.methods.features.adapters import match_spatial
from distill.methods.features.fsp import FSP, fsp_matrix
from distill.methods.features.ft import FactorTransfer, Paraphraser, ft_factor_loss, repdistiller_factor
from distill.methods.features.nst import NST, nst_mmd
from distill.methods.features.vid import VID, vid_nll

__all__ = ["ActivationBoundaries", "FSP", "FactorTransfer", "NST", "Paraphraser", "VID", "ab_connector", "ab_hinge",
    "fsp_matrix", "ft_factor_loss", "match_spatial", "nst_mmd", "repdistiller_factor", "vid_nll"]
