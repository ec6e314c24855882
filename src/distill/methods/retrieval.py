"""Deprecated import path, kept for one release; use distill.methods.embedding.leaf,
distill.methods.ranking.margin_mse, distill.methods.ranking.ranking_nll, distill.methods.ranking.score_mse.
"""

from distill.methods.embedding.leaf import LEAF, embedding_regression
from distill.methods.ranking.margin_mse import MarginMSE, margin_mse
from distill.methods.ranking.ranking_nll import RankingNLL
from distill.methods.ranking.score_mse import ScoreMSE

__all__ = ["LEAF", "MarginMSE", "RankingNLL", "ScoreMSE", "embedding_regression", "margin_mse"]
