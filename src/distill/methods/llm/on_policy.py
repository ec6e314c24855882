"""GKD's data mixing: each training step draws u ~ U[0, 1) from the step's generator; if u <= ``lmbda`` the
batch is replaced by the student's own samples (no gradient; TRL: temperature 0.9, top_k 0, top_p 1,
``max_new_tokens`` 128) from the batch's prompts, else the batch is kept (dataset sequences, or teacher
sequences when the data comes from :func:`~distill.llm.generation.teacher_sequences`: TRL's ``seq_kd``). It adds
no loss term: combine it with a divergence (e.g. ``gjsd``), which the teacher then evaluates on the chosen
sequences. A live teacher is needed for generated batches (a top-k store only covers dataset rows).

Difference from TRL: with ``seq_kd`` TRL samples fresh teacher completions every step; here they are sampled
once and cached (the sequence-level KD data), which is what DistiLLM's SeqKD baseline does.

Paper: On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes (GKD), ICLR 2024,
arXiv:2306.13649; code: https://github.com/huggingface/trl.
"""

from __future__ import annotations

import torch

from distill.core.batch import Batch
from distill.core.method import Method, register_method
from distill.core.outputs import RunInfo, StepInputs
from distill.llm.generation import generate_completions, prompts_of


@register_method("on_policy", family="llm", paper="On-Policy Distillation of Language Models: Learning from "
                 "Self-Generated Mistakes (GKD)", year=2024, arxiv="2306.13649", venue="ICLR",
                 repo="https://github.com/huggingface/trl", aliases=("gkd_on_policy",))
class OnPolicy(Method):
    """GKD's data mixing: each training step draws u ~ U[0, 1) from the step's generator; if u <= ``lmbda`` the
    batch is replaced by the student's own samples (no gradient; TRL: temperature 0.9, top_k 0, top_p 1,
    ``max_new_tokens`` 128) from the batch's prompts, else the batch is kept (dataset sequences, or teacher
    sequences when the data comes from :func:`~distill.llm.generation.teacher_sequences`: TRL's
    ``seq_kd``)."""

    tasks = frozenset({"causal_lm"})

    needs_teacher = False
    accepts_hidden_states = True  # reads no model output

    def __init__(self, lmbda: float = 0.5, max_new_tokens: int = 128, temperature: float = 0.9, top_k: int = 0,
                 top_p: float = 1.0, prefix_tokens: int = 32, pad_id: int | None = None, eos_id: int | None = None):
        super().__init__()
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {lmbda}")
        self.lmbda, self.max_new_tokens, self.temperature = float(lmbda), int(max_new_tokens), float(temperature)
        self.top_k, self.top_p, self.prefix_tokens = int(top_k), float(top_p), int(prefix_tokens)
        self.pad_id, self.eos_id = pad_id, eos_id
        object.__setattr__(self, "_student", None)  # not a submodule: never in the state dict or the optimiser
        self.generated_steps = 0

    def setup(self, student, teacher, info: RunInfo) -> None:
        if info.student is None:
            raise ValueError("on_policy needs the student model (RunInfo.student) to sample from")
        object.__setattr__(self, "_student", info.student)
        cfg = getattr(info.student, "config", None)
        if self.pad_id is None:
            self.pad_id = getattr(cfg, "pad_token_id", None)
        if self.eos_id is None:
            self.eos_id = getattr(cfg, "eos_token_id", None)
        if self.pad_id is None:
            self.pad_id = self.eos_id if self.eos_id is not None else 0

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        u = float(torch.rand((), generator=generator))
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        if u > self.lmbda or self._student is None:
            return batch
        inputs = batch.inputs
        prompts = prompts_of(inputs["input_ids"], inputs["attention_mask"], inputs["prompt_lengths"],
                             self.prefix_tokens)
        data = generate_completions(self._student, prompts, pad_id=int(self.pad_id), eos_id=self.eos_id,
                                    max_new_tokens=self.max_new_tokens, do_sample=True,
                                    temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=seed)
        self.generated_steps += 1
        device = inputs["input_ids"].device
        new_inputs = {"input_ids": data.input_ids.to(device), "attention_mask": data.attention_mask.to(device),
                      "prompt_lengths": data.prompt_lengths.to(device)}
        meta = {k: v for k, v in batch.meta.items() if k != "teacher_top1"}
        meta["generated"] = True
        return Batch(new_inputs, data.labels.to(device), None, meta)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {}
