"""Text embedding (``task: embedding``) for sentence-transformers students: unlabelled texts in, sentence
embeddings out. Metric: mean cosine between student and teacher embeddings (when an evaluation teacher is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import Batch
from distill.text.st_models import embed, encode, tokenize


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """(n, 2) int64: two 31-bit slices of each text's sha256, a per-example identity for a cache's input guard."""
    import hashlib

    rows = []
    for t in texts:
        h = hashlib.sha256(t.encode("utf-8")).digest()
        rows.append([int.from_bytes(h[:4], "little") >> 1, int.from_bytes(h[4:8], "little") >> 1])
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 2)


@dataclass
class TextSet:
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


class EvalTargets:
    """The teacher's embeddings of the evaluation texts, computed once (on first use) and served by position:
    the targets of the ``cosine_to_teacher`` metric."""

    def __init__(self, teacher: Any, task: Any, data: TextSet, batch_size: int = 64):
        self.teacher, self.task, self.data, self.batch_size = teacher, task, data, batch_size
        self.table: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Any:
        from distill.core.outputs import ModelOutput

        if self.table is None:
            from distill.train.progress import track

            rows = []
            starts = range(0, len(self.data), self.batch_size)
            for lo in track(starts, "teacher embeddings (eval)", len(self.data),
                            size=lambda lo: min(self.batch_size, len(self.data) - lo)):
                idx = torch.arange(lo, min(lo + self.batch_size, len(self.data)))
                model = getattr(self.teacher, "model", None)
                device = next(model.parameters()).device if model is not None else torch.device("cpu")
                out = self.teacher(self.task.fetch(self.data, idx).to(device), self.task)
                rows.append(out.logits.float().cpu())
            self.table = torch.cat(rows)
        return ModelOutput(self.table[batch.indices.cpu()])


class EmbeddingMetrics:
    def __init__(self, teacher: Any | None):
        self.teacher = teacher
        self.cos_sum = 0.0
        self.n = 0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        if self.teacher is None:
            return
        target = self.teacher(batch).logits.to(outputs.device)
        self.cos_sum += float(F.cosine_similarity(outputs.float(), target.float(), dim=-1).sum())
        self.n += outputs.shape[0]

    def compute(self) -> dict[str, float]:
        return {"cosine_to_teacher": self.cos_sum / max(self.n, 1)} if self.teacher is not None else {}


class TextEmbedding:
    """Embed texts with a sentence-transformers model; ``tokenizer_model`` (usually the student) tokenizes."""

    primary_metric = "cosine_to_teacher"
    higher_is_better = True

    def __init__(self, tokenizer_model: nn.Module, max_length: int = 128, eval_teacher: Any | None = None):
        self.tokenizer_model = tokenizer_model
        self.max_length = max_length
        self.eval_teacher = eval_teacher

    def num_examples(self, data: TextSet) -> int:
        return len(data)

    def fetch(self, data: TextSet, indices: torch.Tensor) -> Batch:
        texts = [data.texts[int(i)] for i in indices]
        inputs = tokenize(self.tokenizer_model, texts, self.max_length) if self.tokenizer_model is not None else {}
        return Batch(inputs, None, indices, {"texts": texts})

    def teacher_forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A sentence-transformers teacher embeds the batch's texts with its own tokenizer."""
        return encode(model, batch.meta["texts"], batch_size=max(len(batch.meta["texts"]), 1),
                      max_length=self.max_length)

    def guard_inputs(self, batch: Batch) -> torch.Tensor:
        """A teacher cache's input guard compares the texts (the student's tokens are not the teacher's)."""
        return text_ids(batch.meta["texts"])

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        return batch

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return embed(model, batch.inputs)

    def new_metrics(self) -> EmbeddingMetrics:
        return EmbeddingMetrics(self.eval_teacher)
