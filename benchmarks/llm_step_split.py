"""Where the CPU time of one live-teacher forward-KL step goes: distill's chunked path vs the dense (TRL GKD-style)
computation, part by part, on the same models and tokens as benchmarks/llm_vs_trl.py (run that first: it saves the
models and batches under benchmarks/work/llm_vs_trl).

    python benchmarks/llm_step_split.py                 # 512 tokens x 1 row, 1 thread; results/llm_step_split.json
    python benchmarks/llm_step_split.py --tokens 1024 --batch 4 --threads 2 \
        --out benchmarks/results/llm_step_split_1024x4.json

Times are the process's CPU seconds (time.process_time), which a shared machine distorts far less than wall time.
Parts, chunked (``data.chunk_tokens``): the teacher's decoder (no-grad), the student's decoder, the loss (both heads
chunk by chunk, log-softmaxes, the divergence and its gradient with respect to the hidden states and the head,
computed in the forward pass), the backward pass (the student's decoder). Dense: the teacher's full forward (decoder
and head) under no-grad, the student's full forward, log-softmaxes + ``F.kl_div(log q, log p, log_target=True)``
(TRL's ``generalized_jsd_loss`` at beta 0), the backward pass (loss, head and decoder). Also timed, outside the
totals: the chunked loss with the analytic kernel switched off (autograd on each chunk, the route before the
kernels of :mod:`distill.methods.llm.chunked`), on the same hidden states.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from portable import write_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(HERE / "work" / "llm_vs_trl"))
    p.add_argument("--out", default=str(HERE / "results" / "llm_step_split.json"))
    args = p.parse_args()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from distill.core.batch import Batch
    from distill.core.outputs import ModelOutput, StepInputs
    from distill.methods.llm.fkl import ForwardKL
    from distill.tasks.causal_lm import CausalLM

    torch.set_num_threads(args.threads)

    class NoKernelFKL(ForwardKL):
        def chunk_kernel(self) -> None:
            return None
    work = Path(args.work)
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(work / "student", dtype=torch.float32)
    for q in teacher.parameters():
        q.requires_grad_(False)
    blocks = next(iter(sorted(work.glob("blocks_1024x*.safetensors"))))
    ids = load_file(str(blocks))["input_ids"][:args.batch, :args.tokens]
    mask = torch.ones_like(ids)
    batch = Batch({"input_ids": ids, "attention_mask": mask}, ids.clone())
    vocab = student.get_output_embeddings().weight.shape[0]
    reps = []
    parts: dict[str, float] = {}
    clock = [time.process_time()]

    def tick(name: str) -> None:
        now = time.process_time()
        parts[name] = round(now - clock[0], 3)
        clock[0] = now

    for _ in range(args.repeats):
        parts = {}
        clock[0] = time.process_time()

        task = CausalLM(vocab, chunk_tokens=args.chunk)
        with torch.no_grad():
            th = task.forward(teacher, batch)
        tick("chunked: teacher decoder")
        sh = task.forward(student, batch)
        tick("chunked: student decoder")
        loss = ForwardKL()(StepInputs(ModelOutput.of(sh), ModelOutput.of(th), batch.labels))["loss"]
        tick("chunked: loss (heads, divergence, its gradient)")
        loss.backward()
        tick("chunked: backward")
        autograd_route = NoKernelFKL()(StepInputs(ModelOutput.of(sh), ModelOutput.of(th), batch.labels))["loss"]
        tick("(not in the total) chunked loss, autograd per chunk")
        assert abs(float(autograd_route) - float(loss)) <= 1e-5 * abs(float(loss))
        student.zero_grad(set_to_none=True)
        clock[0] = time.process_time()
        with torch.no_grad():
            tl = teacher(input_ids=ids, attention_mask=mask).logits
        tick("dense: teacher forward (decoder + head)")
        sl = student(input_ids=ids, attention_mask=mask).logits
        tick("dense: student forward (decoder + head)")
        dense = F.kl_div(F.log_softmax(sl[:, :-1], -1), F.log_softmax(tl[:, :-1], -1), reduction="none",
                         log_target=True).sum() / (ids.numel() - ids.shape[0])
        tick("dense: loss")
        dense.backward()
        tick("dense: backward")
        student.zero_grad(set_to_none=True)
        parts["chunked total"] = round(sum(v for k, v in parts.items() if k.startswith("chunked:")), 3)
        parts["chunked total, autograd per chunk"] = round(
            parts["chunked total"] - parts["chunked: loss (heads, divergence, its gradient)"]
            + parts["(not in the total) chunked loss, autograd per chunk"], 3)
        parts["dense total"] = round(sum(v for k, v in parts.items() if k.startswith("dense:")), 3)
        reps.append({"parts": parts, "chunked_loss": float(loss), "dense_loss": float(dense)})
        print(reps[-1], flush=True)
    write_json(Path(args.out), {"setup": {"tokens": args.tokens, "batch": args.batch, "chunk_tokens": args.chunk,
                                          "threads": args.threads, "clock": "process CPU seconds",
                                          "command": " ".join(["python", "benchmarks/llm_step_split.py",
                                                               *sys.argv[1:]])},
                                "repeats": reps})


if __name__ == "__main__":
    main()
