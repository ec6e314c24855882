"""A teacher with another tokenizer (``data.cross_tokenizer``): its next-token distributions placed at the
student's positions, for methods that need no shared vocabulary (``uld``).

Each student row is decoded to text (the decode must give back the row's ids: checked), tokenised by the teacher's
tokenizer with character offsets, and run through the teacher. Position j of a tokenisation holds the model's
distribution over what follows its token j, i.e. over the text after the character offset e_j where token j ends.
Two alignments pair student positions i with teacher positions j:

* ``token_end`` (default, ours): i and j are paired when the student's token i and the teacher's token j end at
  the same character, e_i = e_j; both distributions are then conditioned on exactly the same text prefix and
  predict what follows it. With a character-level student every teacher token end is a student token end, so each
  teacher position is used once, at the student's last character of that teacher token; student positions inside
  a teacher token get no teacher term. (Where a byte-level BPE splits one character over several tokens that share
  one end offset, the last of them is used: the one after which the character is complete.)
* ``index`` (the official ULD code, ``models/distillation_model.py`` of llm-recipes): the i-th student position
  with the i-th teacher position, both sequences truncated to the shorter one, whatever text each has read.

Unpaired student positions carry ``aligned = False`` (ModelOutput feature ``"aligned"``) and zeros in the top-k.
The teacher's distributions are kept as their top ``topk`` log-probabilities (+ the tail mass, implicit).

``cache``: a folder where the outputs on every training row are stored once (the store format of
:mod:`distill.cache.store`: sharded, checksummed, fingerprinted by the teacher's weights, the data, both
tokenizers, the alignment and k) and served by example index; without it the teacher runs at every step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput
from distill.core.teachers import freeze
from distill.core.topk import TopKLogits

ALIGNMENTS = ("token_end", "index")


def token_ends(offsets: Sequence[Sequence[int]]) -> list[int]:
    """The character offset where each token ends (from a fast tokenizer's ``offset_mapping``)."""
    return [int(e) for _, e in offsets]


def align_positions(student_ends: Sequence[int], teacher_ends: Sequence[int],
                    alignment: str = "token_end") -> list[tuple[int, int]]:
    """(student position, teacher position) pairs: ``token_end`` pairs tokens that end at the same character (for a
    shared end offset, the teacher's last token ending there); ``index`` pairs i with i up to the shorter length."""
    if alignment == "index":
        n = min(len(student_ends), len(teacher_ends))
        return [(i, i) for i in range(n)]
    if alignment != "token_end":
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    teacher_at: dict[int, int] = {}
    for j, e in enumerate(teacher_ends):
        teacher_at[e] = j  # later tokens win: the one after which the text up to e is complete
    pairs, seen = [], set()
    for i, e in enumerate(student_ends):
        if e in teacher_at and e not in seen and e > 0:
            pairs.append((i, teacher_at[e]))
            seen.add(e)
    return pairs


def _vocab_hash(tok: Any) -> str:
    from distill.tasks.causal_lm.task import vocab_fingerprint

    return vocab_fingerprint(tok)


class CrossTokenizerTeacher:
    """A frozen teacher model with its own tokenizer, serving its top-k distributions at the student's positions
    (see the module). A teacher source: ``source(batch, task, taps) -> ModelOutput(topk=..., features={"aligned"})``.
    """

    def __init__(self, model: nn.Module, teacher_tokenizer: Any, student_tokenizer: Any, alignment: str = "token_end",
                 topk: int = 128, batch_size: int = 8):
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        self.model = freeze(model)
        self.teacher_tokenizer = teacher_tokenizer
        self.student_tokenizer = student_tokenizer
        self.alignment = alignment
        self.topk = int(topk)
        self.batch_size = int(batch_size)
        self.store: Any = None
        self.device = torch.device("cpu")

    # -- teacher source protocol ------------------------------------------------------------------------------
    def to(self, *args: object, **kwargs: object) -> CrossTokenizerTeacher:
        self.model.to(*args, **kwargs)
        self.device = next(self.model.parameters()).device
        return self

    @torch.no_grad()
    def __call__(self, batch: Batch, task: Any = None, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"a cross-tokenizer teacher serves distributions only, not features {list(taps)}")
        ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        if self.store is not None:
            if batch.meta.get("generated") or batch.indices is None:
                raise ValueError("data.cross_tokenizer.cache serves the training rows it was built on (by index); "
                                 "this batch has none")
            got = self.store.get(batch.indices.cpu(), 0, ["topk_indices", "topk_logprobs", "aligned", "row_hash"])
            want = torch.as_tensor([row_hash(r, m) for r, m in zip(ids.cpu(), mask.cpu())])
            stored = got["row_hash"].long().view(-1)
            if not torch.equal(want, stored):
                raise ValueError("data.cross_tokenizer.cache: a batch row differs from the row the stored teacher "
                                 "output was computed on (another split or data); rebuild the store")
            width = ids.shape[1]
            idx = got["topk_indices"][:, :width].long()
            lp = got["topk_logprobs"][:, :width].float()
            aligned = got["aligned"][:, :width].bool()
            num_classes = int(self.store.manifest["meta"]["num_classes"])
        else:
            idx, lp, aligned, num_classes = self.compute(ids, mask)
        dev = ids.device
        return ModelOutput(None, {"aligned": aligned.to(dev)},  # type: ignore[arg-type]
                           TopKLogits(idx.to(dev), lp.to(dev), num_classes))

    # -- the computation --------------------------------------------------------------------------------------
    def row_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[str, list[int]]:
        """The text of one student row and its tokens' end offsets; refuses a row whose decode does not
        tokenise back to the same ids."""
        kept = ids[mask.bool()].tolist()
        text = self.student_tokenizer.decode(kept)
        enc = self.student_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != kept:
            raise ValueError("data.cross_tokenizer: a student row does not decode to text that tokenises back to the "
                             "same ids, so its character offsets are unknown (use a student tokenizer whose decode is "
                             "exact, e.g. data.tokenizer: chars)")
        return text, token_ends(enc["offset_mapping"])

    @torch.no_grad()
    def compute(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(top-k ids (B, L, k), top-k log-probabilities (B, L, k), aligned (B, L), teacher vocabulary) for student
        rows ``ids`` (B, L) with ``mask``; rows are run through the teacher ``batch_size`` at a time."""
        b, length = ids.shape
        k = self.topk
        out_idx = torch.zeros(b, length, k, dtype=torch.long)
        out_lp = torch.zeros(b, length, k, dtype=torch.float32)
        aligned = torch.zeros(b, length, dtype=torch.bool)
        num_classes = None
        self.model.eval()
        for lo in range(0, b, self.batch_size):
            rows = range(lo, min(lo + self.batch_size, b))
            texts, s_ends, t_ids, t_ends = [], [], [], []
            for r in rows:
                text, ends = self.row_text(ids[r].cpu(), mask[r].cpu())
                enc = self.teacher_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                texts.append(text)
                s_ends.append(ends)
                t_ids.append(list(enc["input_ids"]))
                t_ends.append(token_ends(enc["offset_mapping"]))
            width = max(1, max(len(t) for t in t_ids))
            pad = self.teacher_tokenizer.pad_token_id
            pad = int(pad if pad is not None else (self.teacher_tokenizer.eos_token_id or 0))
            t_in = torch.full((len(t_ids), width), pad, dtype=torch.long)
            t_mask = torch.zeros((len(t_ids), width), dtype=torch.long)
            for n, t in enumerate(t_ids):
                t_in[n, :len(t)] = torch.tensor(t, dtype=torch.long)
                t_mask[n, :len(t)] = 1
            out = self.model(input_ids=t_in.to(self.device), attention_mask=t_mask.to(self.device))
            logits = (out.logits if hasattr(out, "logits") else out).float()
            if len(self.teacher_tokenizer) < logits.shape[-1]:  # an embedding padded past the tokenizer
                logits = logits[..., :len(self.teacher_tokenizer)]
            num_classes = int(logits.shape[-1])
            top = TopKLogits.from_logits(logits, min(k, num_classes))
            for n, r in enumerate(rows):
                for i, j in align_positions(s_ends[n], t_ends[n], self.alignment):
                    if j < len(t_ids[n]):
                        out_idx[r, i, :top.k] = top.indices[n, j].cpu()
                        out_lp[r, i, :top.k] = top.logprobs[n, j].cpu()
                        aligned[r, i] = True
        assert num_classes is not None
        return out_idx, out_lp, aligned, num_classes

    # -- the store --------------------------------------------------------------------------------------------
    def fingerprint(self, data: Any) -> dict[str, Any]:
        from distill.cache.teacher import teacher_fingerprint

        return {"kind": "cross_tokenizer", "teacher": teacher_fingerprint(self.model), "data": data.fingerprint(),
                "teacher_vocab": _vocab_hash(self.teacher_tokenizer),
                "student_vocab": _vocab_hash(self.student_tokenizer), "alignment": self.alignment, "topk": self.topk}

    def use_store(self, path: str | Path, data: Any, log: Any = None) -> None:
        """Serve the outputs on ``data``'s rows from the store at ``path``, computing it first when it has no
        finished manifest (a store built for another teacher, data, tokenizer, alignment or k is refused)."""
        from distill.cache.store import MANIFEST, TensorSpec, TensorStore, TensorStoreWriter

        path = Path(path)
        expected = self.fingerprint(data)
        if not (path / MANIFEST).exists():
            n, length = data.input_ids.shape
            writer = None
            num_classes = 0
            for lo in range(0, n, self.batch_size):
                sel = torch.arange(lo, min(lo + self.batch_size, n))
                idx, lp, aligned, num_classes = self.compute(data.input_ids[sel], data.attention_mask[sel])
                if writer is None:
                    specs = {"topk_indices": TensorSpec((length, idx.shape[-1]), "int32"),
                             "topk_logprobs": TensorSpec((length, idx.shape[-1]), "float16"),
                             "aligned": TensorSpec((length,), "uint8"), "row_hash": TensorSpec((1,), "int64")}
                    writer = TensorStoreWriter(path, n, 1, specs)
                hashes = torch.tensor([[row_hash(data.input_ids[i], data.attention_mask[i])] for i in sel.tolist()])
                writer.write(sel, 0, {"topk_indices": idx.int(), "topk_logprobs": lp,
                                      "aligned": aligned.to(torch.uint8), "row_hash": hashes})
                if log is not None and (lo // self.batch_size) % 10 == 0:
                    log(f"cross-tokenizer teacher store: {min(lo + self.batch_size, n)}/{n} rows")
            assert writer is not None
            writer.close(expected, {"num_classes": num_classes, "alignment": self.alignment, "k": self.topk})
        self.store = TensorStore.open(path, expected=expected)


def row_hash(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """A 63-bit hash of a row's unpadded tokens (whatever width the batch was cut to), the store's input guard."""
    kept = ids.long()[mask != 0].contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(kept).digest()[:8], "little") >> 1
