"""Deprecated import path, kept for one release: use distill.tasks.embedding.task and distill.tasks.ranking.task."""

from distill.tasks.embedding.task import (  # noqa: F401
    EmbeddingMetrics,
    TextEmbedding,
    TextSet,
)
from distill.tasks.ranking.task import (  # noqa: F401
    RankingGroups,
    RankingMetrics,
    TextRanking,
    _prefixed,
    _unprefixed,
    group_scores,
    texts_of,
)
