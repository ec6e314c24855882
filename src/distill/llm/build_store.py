"""Build an offline top-k teacher store for LM data (resumable).

    python -m distill.llm.build_store --teacher MODEL.gguf --text input.txt --block-size 128 --k 64 --out store/
    python -m distill.llm.build_store --teacher hf_model_dir --jsonl pairs.jsonl --k 32 --out store/

The store holds the training split exactly as ``task: causal_lm`` loads it with the same data options, so a run
with ``lm.topk_store: store/`` serves it row by row. Re-running the command after an interruption continues from
the last written row; a store built from another teacher, data or tokenizer is refused (fingerprint).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from distill.llm.experiment import load_causal_lm, load_tokenizer
from distill.llm.topk_store import build_topk_store, model_fingerprint, store_fingerprint
from distill.tasks.causal_lm import CausalLM, prompt_response_jsonl, text_blocks, vocab_fingerprint


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="a .gguf file or a Hugging Face model directory")
    ap.add_argument("--tokenizer", help="default: the teacher's")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="plain-text corpus (its training split is stored)")
    src.add_argument("--jsonl", help="prompt/response JSONL")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--train-blocks", type=int, help="keep only the first N training rows")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(Path(args.tokenizer or args.teacher))
    if args.text:
        data, _ = text_blocks(args.text, tok, args.block_size, args.val_fraction, args.max_tokens)
    else:
        data = prompt_response_jsonl(args.jsonl, tok, args.max_length)
    if args.train_blocks:
        data = data.subset(slice(0, args.train_blocks))
    teacher = load_causal_lm(Path(args.teacher), "--teacher")
    fp = store_fingerprint(model_fingerprint(teacher), data.fingerprint(), vocab_fingerprint(tok))
    start = time.time()
    store = build_topk_store(teacher, CausalLM(len(tok)), data, args.out, k=args.k, batch_size=args.batch_size,
                             dtype=args.dtype, fingerprint=fp, log=print)
    print(f"wrote {args.out}: {len(store)} rows x {data.input_ids.shape[1]} tokens, k = {store.k}, "
          f"{store.nbytes() / 1e6:.1f} MB, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
