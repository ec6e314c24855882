"""Distillation of ranking scores (family ``ranking``): one module per method; the score checks they share are
in :mod:`distill.methods.ranking.scores`."""
