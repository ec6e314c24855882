"""Deprecated import path, kept for one release; use distill.methods.graph.d2dgn, distill.methods.graph.ffg2m,
distill.methods.graph.glnn.
"""

from distill.methods.graph.base import batch_edges, kl_rows
from distill.methods.graph.d2dgn import D2DGN, binary_log_probs
from distill.methods.graph.ffg2m import FFG2M, hfd_loss, lfd_loss
from distill.methods.graph.glnn import GLNN

__all__ = ["D2DGN", "FFG2M", "GLNN", "batch_edges", "binary_log_probs", "hfd_loss", "kl_rows", "lfd_loss"]
