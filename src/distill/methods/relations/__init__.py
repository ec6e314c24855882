"""Relational losses (family ``relations``): the student matches relations between the examples of a batch rather
than the teacher's features themselves (SP Gram matrices, CC kernel correlations, RKD distances and angles, PKT
affinities). One module per method.

Also the old ``distill.methods.relations`` module: its public names are re-exported here.
"""

from distill.methods.relations.cc import CorrelationCongruence, cc_congruence, cc_consecutive, correlation_matrix
from distill.methods.relations.pkt import ProbabilisticKT, pkt_loss, pkt_probabilities
from distill.methods.relations.rkd import RelationalKD, rkd_angles, rkd_distances, rkd_normalized_distances
from distill.methods.relations.sp import SimilarityPreserving, similarity_matrix, sp_loss

__all__ = [
    "CorrelationCongruence",
    "ProbabilisticKT",
    "RelationalKD",
    "SimilarityPreserving",
    "cc_congruence",
    "cc_consecutive",
    "correlation_matrix",
    "pkt_loss",
    "pkt_probabilities",
    "rkd_angles",
    "rkd_distances",
    "rkd_normalized_distances",
    "similarity_matrix",
    "sp_loss",
]
