"""A transfer set for distilling a text classifier: augmented copies of the training sentences, labelled only by
the teacher.

Tang et al., "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks" (2019, arXiv 1903.12136),
Section 3.3: a small student learns far more from a teacher when it sees the teacher's outputs on many more
sentences than the labelled set holds. Each synthetic sentence is made from a training sentence, word by word:

- with probability ``p_mask`` a word is replaced by the mask token (the teacher's own, e.g. ``[MASK]``);
- else with probability ``p_replace`` it is replaced by another word. The paper draws the new word from the words
  with the same part-of-speech tag; we draw it from the corpus unigram distribution of all words, since a POS
  tagger is not a dependency here (``replace_weights`` lets a caller restrict the candidates per word);
- then, with probability ``p_ngram``, the whole sentence is cut to one random n-gram of it, n uniform in
  ``ngram_range`` (1..5 in the paper).

This is repeated ``copies`` times per sentence (20 in the paper; paper defaults p_mask = p_replace = 0.1,
p_ngram = 0.25); a copy equal to its source or to an earlier copy is dropped. Labels are not carried over:
a masked or cut sentence may have changed meaning, so the copies carry :data:`UNLABELED` and only the teacher's
output trains the student on them. Sentences are split on whitespace (the SST files are already tokenised).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import ConfigDict, Field

from distill.core.batch import IGNORE_INDEX
from distill.data.text import TextExamples

#: the label of an example that only a teacher labels (``ce`` skips these rows)
UNLABELED = IGNORE_INDEX


@dataclass
class AugmentConfig:
    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    copies: Annotated[int, Field(ge=0, le=1000)] = 20
    p_mask: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    p_replace: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    p_ngram: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    ngram_range: tuple[Annotated[int, Field(gt=0, le=1000)], Annotated[int, Field(gt=0, le=1000)]] = (1, 5)
    #: None: the tokenizer's mask token (``[MASK]`` when it has none)
    mask_token: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("p_mask", "p_replace", "p_ngram"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.p_mask + self.p_replace > 1.0:
            raise ValueError(f"p_mask + p_replace must be <= 1, got {self.p_mask + self.p_replace}")
        if self.copies < 0:
            raise ValueError(f"copies must be >= 0, got {self.copies}")
        lo, hi = self.ngram_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must be (lo, hi) with 1 <= lo <= hi, got {self.ngram_range}")


def augment_sentence(words: Sequence[str], cfg: AugmentConfig, rng: random.Random, vocabulary: Sequence[str],
                     cumulative: Sequence[float]) -> list[str]:
    """One synthetic sentence from ``words`` (see the module docstring); ``vocabulary`` with its cumulative
    unigram weights gives the replacement words."""
    out = []
    for w in words:
        x = rng.random()
        if x < cfg.p_mask:
            out.append(cfg.mask_token or "[MASK]")
        elif x < cfg.p_mask + cfg.p_replace and vocabulary:
            out.append(rng.choices(vocabulary, cum_weights=cumulative, k=1)[0])
        else:
            out.append(w)
    if out and rng.random() < cfg.p_ngram:
        n = min(rng.randint(*cfg.ngram_range), len(out))
        start = rng.randrange(len(out) - n + 1)
        out = out[start:start + n]
    return out


def augment_examples(examples: TextExamples, cfg: AugmentConfig | None = None) -> tuple[TextExamples, list[int]]:
    """The transfer set: ``examples`` unchanged (with their labels) followed by up to ``cfg.copies`` synthetic
    copies of each sentence (label :data:`UNLABELED`). Returns the set and, for every row, the index of the
    sentence it was made from. Deterministic for a given ``cfg.seed``."""
    cfg = cfg or AugmentConfig()
    rng = random.Random(cfg.seed)
    counts = Counter(w for s in examples.texts for w in s.split())
    vocabulary = sorted(counts)
    cumulative, total = [], 0.0
    for w in vocabulary:
        total += counts[w]
        cumulative.append(total)
    texts, labels = list(examples.texts), list(examples.labels)
    source = list(range(len(examples)))
    from distill.train.progress import track

    for i, sentence in enumerate(track(examples.texts, "text augmentation")):
        words = sentence.split()
        seen = {" ".join(words)}
        for _ in range(cfg.copies):
            new = " ".join(augment_sentence(words, cfg, rng, vocabulary, cumulative))
            if new and new not in seen:
                seen.add(new)
                texts.append(new)
                labels.append(UNLABELED)
                source.append(i)
    out = TextExamples(texts, labels, list(examples.classes), f"{examples.source} (+{cfg.copies} copies each)")
    return out, source
