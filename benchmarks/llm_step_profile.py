"""Where the time of one live-teacher LM distillation step goes: distill's chunked step vs a TRL-like dense step.

    python benchmarks/llm_step_profile.py --tokens 1024 --batch 4      # after benchmarks/llm_vs_trl.py prepared

The job of benchmarks/llm_vs_trl.py (SmolLM2-135M teacher, the 4-layer Llama student, forward KL, fp32, AdamW),
on its prepared models and batches (benchmarks/work/llm_vs_trl), in one process, phase by phase: wall and CPU
seconds (``time.process_time``, all threads) of

* ``distill``: the teacher's decoder (no logits), the student's decoder, the chunked loss
  (:mod:`distill.methods.llm.chunked`: logits, divergence and its gradient chunk by chunk), the backward pass
  through the student's decoder, AdamW;
* ``dense``: what TRL's GKD trainer computes (its ``generalized_jsd_loss`` at beta 0 on full logits), written out
  here with the same torch: both models' full logits, two log-softmaxes, ``kl_div(log_target=True)``, the
  backward pass (through the loss and the whole student), AdamW. It is not TRL itself (no Trainer overhead), a
  breakdown of the same arithmetic.

Results are printed and written to ``--out`` (default benchmarks/work/llm_step_profile.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


class Phases:
    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {}
        self._t = (time.perf_counter(), time.process_time())

    def mark(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        wall, cpu = self.rows.get(name, [0.0, 0.0])
        self.rows[name] = [wall + now[0] - self._t[0], cpu + now[1] - self._t[1]]
        self._t = now


def distill_step(teacher, student, task, method, ids, opt) -> Phases:  # type: ignore[no-untyped-def]
    from distill.core.batch import Batch
    from distill.core.outputs import ModelOutput, StepInputs

    batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids.clone())
    ph = Phases()
    with torch.inference_mode():
        t_out = task.hidden_states(teacher, batch)
    ph.mark("teacher forward (decoder)")
    s_out = task.hidden_states(student, batch)
    ph.mark("student forward (decoder)")
    inputs = StepInputs(student=ModelOutput(None, hidden=s_out),  # type: ignore[arg-type]
                        teacher=ModelOutput(None, hidden=t_out.detach()), labels=batch.labels)
    loss = method(inputs)["loss"]
    ph.mark("chunked loss (both heads, divergence, its gradient)")
    loss.backward()
    ph.mark("backward (student decoder)")
    opt.step()
    opt.zero_grad(set_to_none=True)
    ph.mark("AdamW")
    return ph


def dense_step(teacher, student, ids, opt) -> Phases:  # type: ignore[no-untyped-def]
    ph = Phases()
    with torch.no_grad():
        zt = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    ph.mark("teacher forward (with full logits)")
    zs = student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    ph.mark("student forward (with full logits)")
    zs, zt = zs[:, :-1], zt[:, :-1]
    jsd = F.kl_div(F.log_softmax(zs, -1), F.log_softmax(zt, -1), reduction="none", log_target=True)
    loss = jsd.sum() / (zs.shape[0] * zs.shape[1])
    ph.mark("dense loss forward (log-softmaxes, kl_div)")
    loss.backward()
    ph.mark("backward (loss, head, student decoder)")
    opt.step()
    opt.zero_grad(set_to_none=True)
    ph.mark("AdamW")
    return ph


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arms", default="distill,dense")
    p.add_argument("--work", default=str(HERE / "work" / "llm_vs_trl"))
    p.add_argument("--out", default=str(HERE / "work" / "llm_step_profile.json"))
    args = p.parse_args()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from distill.methods.llm.fkl import ForwardKL
    from distill.tasks.causal_lm import CausalLM

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    files = sorted(work.glob(f"blocks_{args.tokens}x*.safetensors"))
    ids = load_file(str(files[0]))["input_ids"][: args.batch]
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float32).eval()
    result = {}
    for arm in args.arms.split(","):
        student = AutoModelForCausalLM.from_pretrained(work / "student", dtype=torch.float32).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
        if arm == "distill":
            task = CausalLM(student.get_output_embeddings().weight.shape[0], chunk_tokens=args.chunk)
            ph = distill_step(teacher, student, task, ForwardKL(), ids, opt)
        else:
            ph = dense_step(teacher, student, ids, opt)
        total = [sum(v[0] for v in ph.rows.values()), sum(v[1] for v in ph.rows.values())]
        result[arm] = {"phases": {k: [round(v[0], 2), round(v[1], 2)] for k, v in ph.rows.items()},
                       "total": [round(total[0], 2), round(total[1], 2)]}
        print(f"{arm} ({args.tokens} x {args.batch}): wall s, CPU s", flush=True)
        for k, (w, c) in ph.rows.items():
            print(f"  {k:55s} {w:8.2f} {c:8.2f}", flush=True)
        print(f"  {'total':55s} {total[0]:8.2f} {total[1]:8.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"tokens": args.tokens, "batch": args.batch, "chunk": args.chunk,
                                          "threads": args.threads, **result}, indent=1))


if __name__ == "__main__":
    main()
