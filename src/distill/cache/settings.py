"""What a teacher cache stores and how a run opens it: the ``teacher.cache`` section of every family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from distill.train.config import Flag


@dataclass(frozen=True)
class CacheSettings:
    """``topk=None`` keeps full logits (or embeddings, scores); ``topk=k`` keeps the k largest log-probabilities
    and their indices per row (LLM vocabularies); ``views``: augmented views per example (used when the task
    augments); ``features``: teacher taps to store; ``dtype``: float storage type; ``seed``: the augmentation
    replay's seed; ``hidden``: store, instead of logits, the teacher's final hidden states (the input of its output
    head, per token) and its output head once per cache, so the exact dense logits are recomputed a chunk of tokens
    at a time during training (causal LMs: H x dtype bytes per token instead of V x dtype). How a run opens it:
    ``path`` (the cache folder), ``build`` (``if_missing``: build when there is no finished cache; ``always``:
    rebuild; ``never``: only open), ``batch_size`` of the build, ``verify`` (check every shard's sha256 on
    opening). Only the first six are part of the cache's fingerprint."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    topk: Annotated[int, Field(gt=0)] | None = None
    views: Annotated[int, Field(gt=0)] = 1
    features: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    hidden: Flag = False
    path: str | None = None
    build: Literal["never", "if_missing", "always"] = "if_missing"
    batch_size: Annotated[int, Field(gt=0)] = 256
    verify: Flag = True

    def __post_init__(self) -> None:
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"topk must be >= 1 or None (full logits), got {self.topk}")
        if self.views < 1:
            raise ValueError(f"views must be >= 1, got {self.views}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.hidden and self.topk is not None:
            raise ValueError(f"hidden: stores the teacher's hidden states and head (its dense logits, recomputed); "
                             f"topk = {self.topk} stores its top-k log-probabilities instead: give one of them")
        object.__setattr__(self, "features", tuple(self.features))

    def as_dict(self) -> dict[str, Any]:
        """The stored settings (part of the fingerprint)."""
        out: dict[str, Any] = {"topk": self.topk, "views": self.views, "features": sorted(self.features),
                               "seed": self.seed, "dtype": self.dtype}
        if self.hidden:  # only when set, so the fingerprints of the caches built before the option still match
            out["hidden"] = True
        return out
