"""Deprecated import path, kept for one release; use distill.methods.logits.makd."""

from distill.methods.logits.makd import (
    ASPECT_FEATURE,
    AspectTargets,
    FirstLogits,
    MultiAspectKD,
    answer_token_ids,
    aspect_prompt,
    aspect_report,
    score_aspects,
    texts_fingerprint,
    yes_probability,
)

__all__ = ["ASPECT_FEATURE", "AspectTargets", "FirstLogits", "MultiAspectKD", "answer_token_ids", "aspect_prompt",
    "aspect_report", "score_aspects", "texts_fingerprint", "yes_probability"]
