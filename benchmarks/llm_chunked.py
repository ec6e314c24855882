"""Benchmark: peak memory and time of one live-teacher LM distillation step, dense logits vs chunked losses.

    python benchmarks/llm_chunked.py                 # writes benchmarks/results/llm_chunked.{json,md}
    python benchmarks/llm_chunked.py --quick         # a smoke run (a tiny teacher, short rows; a temp folder)

The step is the library's own (``DistillModule``: a live frozen teacher, the student, ``gjsd`` with beta 0.5 as in
TRL's GKD, AdamW step), on batches of ``--batch`` rows of ``--tokens`` tokens of tinyshakespeare. Teacher:
SmolLM2-135M-Instruct (../shared/models, GGUF Q4_1 dequantised to float32; vocabulary 49,152); student: the small
Llama of the tinyshakespeare benchmark (hidden 192, 4 layers, tied embeddings). Arms: ``dense`` (full logits of
both models, ``data.chunk_tokens`` unset) and ``chunkN`` (``data.chunk_tokens: N``).

Each arm runs in its own process (so that one arm's peak does not hide another's): the models and the batches are
loaded, the resident memory is read, then ``--warmup`` + ``--steps`` steps run; the reported peak is the process's
peak resident memory (``ru_maxrss``) minus the resident memory before the first step, i.e. what the step adds on top
of the loaded models (activations, logits, gradients, AdamW state). Time per step is the median of the timed steps
(1 CPU thread; the machine is shared, so times are indicative). The first step's loss is recorded: the arms compute
the same loss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import portable, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GGUF = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = SHARED / "data" / "tinyshakespeare" / "input.txt"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_arm(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """One arm, in this process: returns its measurements."""
    import torch

    from distill.core.compose import Composite
    from distill.core.teachers import FrozenTeacher
    from distill.llm.models import small_llama
    from distill.methods.llm.gjsd import GeneralizedJSD
    from distill.tasks.causal_lm import CausalLM
    from distill.tasks.causal_lm.task import text_blocks
    from distill.train.module import DistillModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.quick:
        vocab = 4096
        teacher = small_llama(vocab, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                              max_positions=args.tokens, seed=1).eval()
        g = torch.Generator().manual_seed(0)
        blocks = torch.randint(0, vocab, (args.batch * (args.warmup + args.steps), args.tokens), generator=g)
    else:
        from distill.llm.models import load_gguf_model, load_gguf_tokenizer

        tok = load_gguf_tokenizer(GGUF)
        vocab = len(tok)
        teacher = load_gguf_model(GGUF)
        train, _ = text_blocks(TEXT, tok, block_size=args.tokens, val_fraction=0.1,
                               max_tokens=args.tokens * args.batch * (args.warmup + args.steps) * 2)
        blocks = train.input_ids
    student = small_llama(vocab, hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512,
                          max_positions=max(args.tokens, 256), seed=0)
    chunk = None if arm == "dense" else int(arm.removeprefix("chunk"))
    task = CausalLM(vocab, chunk_tokens=chunk)
    module = DistillModule(student, Composite({"gjsd": GeneralizedJSD(beta=0.5)}, {"gjsd": 1.0}),
                           FrozenTeacher(teacher), task)
    from distill.core.batch import Batch

    def batch(i: int) -> Batch:
        ids = blocks[i * args.batch:(i + 1) * args.batch]
        return Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                      "prompt_lengths": torch.zeros(len(ids), dtype=torch.long)}, ids.clone())

    module.setup(batch(0))  # tiny cost: the methods have no parameters
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    before = rss_mb()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss, _, _ = module(batch(i))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    timed = times[args.warmup:]
    return {"arm": arm, "chunk_tokens": chunk, "rss_before_step_mb": round(before, 1),
            "peak_rss_mb": round(peak, 1), "step_peak_mb": round(peak - before, 1),
            "step_seconds_median": round(statistics.median(timed), 3), "step_seconds": [round(t, 3) for t in times],
            "first_loss": losses[0], "losses": losses}


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    rows = ["| arm | chunk_tokens | step peak memory (MB) | vs dense | time per step (s) | vs dense "
            "| first-step loss |",
            "|---|---|---|---|---|---|---|"]
    dense = next((a for a in result["arms"] if a["arm"] == "dense"), None)
    for a in result["arms"]:
        mem = f"{a['step_peak_mb'] / dense['step_peak_mb']:.2f}x" if dense else "-"
        tim = f"{a['step_seconds_median'] / dense['step_seconds_median']:.2f}x" if dense else "-"
        rows.append(f"| {a['arm']} | {a['chunk_tokens'] or '-'} | {a['step_peak_mb']:.0f} | {mem} | "
                    f"{a['step_seconds_median']:.2f} | {tim} | {a['first_loss']:.6f} |")
    head = (f"Teacher {s['teacher']}, student {s['student']}, batch {s['batch']} x {s['tokens']} tokens, "
            f"vocabulary {s['vocab']}, method {s['method']}, {s['threads']} CPU thread; median of {s['steps']} steps "
            f"after {s['warmup']} warm-up.\n\n")
    return head + "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="dense,chunk512,chunk128")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results, or a temp folder)")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    args = p.parse_args()
    if args.quick and args.tokens == 1024:
        args.tokens = 64
    if args.arm is not None:
        print(json.dumps(run_arm(args.arm, args)))
        return
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp()) if args.quick else REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    arms = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for arm in args.arms.split(","):
        cmd = [sys.executable, __file__, "--arm", arm, "--batch", str(args.batch), "--tokens", str(args.tokens),
               "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--quick"] if args.quick else [])
        print(f"[{time.strftime('%H:%M:%S')}] {arm} ...", flush=True)
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        arms.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {arms[-1]['step_peak_mb']:.0f} MB, {arms[-1]['step_seconds_median']:.2f} s/step, "
              f"loss {arms[-1]['first_loss']:.6f}", flush=True)
    setup = {"teacher": "tiny random Llama (quick)" if args.quick else str(GGUF),
             "student": "Llama hidden 192, 4 layers, 4 heads, FFN 512, tied embeddings",
             "batch": args.batch, "tokens": args.tokens, "vocab": 4096 if args.quick else 49152,
             "method": "gjsd beta 0.5 (live teacher), AdamW", "threads": 1, "steps": args.steps,
             "warmup": args.warmup, "data": "random ids (quick)" if args.quick else str(TEXT),
             "command": " ".join(["python", "benchmarks/llm_chunked.py", *sys.argv[1:]])}
    result = {"setup": setup, "arms": arms}
    write_json(out / "llm_chunked.json", result)
    (out / "llm_chunked.md").write_text(markdown(portable(result)))
    print(markdown(portable(result)))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
