"""Peak memory of an image run that holds its images in memory vs one that decodes each batch from the files
(``data.streaming``), on two image folders of different sizes (docs/data.md).

Two folders of random 96 x 96 PNGs (``--small`` and ``--large`` images, 10 classes) are written to a temporary
folder; the same short run (``--steps`` optimiser steps of batch 16, a resnet8x4 student, cross-entropy) is trained
on each, with ``format: imagefolder`` and streaming off, then on, each in its own single-thread process, which
reports its peak resident memory (``ru_maxrss``). Streamed, the peak should not grow with the folder.

    python benchmarks/streaming_memory.py            # writes benchmarks/results/streaming_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from portable import write_json  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "streaming_memory.json"


def make_folder(root: Path, n: int, size: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return root


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints its peak RSS and wall time as JSON."""
    import torch

    torch.set_num_threads(1)
    from distill.config import parse_config
    from distill.experiment import build_experiment

    raw = {"task": "image_classification", "output_dir": str(args.out), "seed": 0,
           "data": {"train": args.folder, "format": "imagefolder", "streaming": args.streaming, "augment": None},
           "student": {"arch": "resnet8x4"}, "methods": [{"name": "ce"}],
           "train": {"epochs": 1, "batch_size": args.batch_size, "max_steps": args.steps, "progress": False,
                     "cpu": True, "checkpoint_every_epochs": 0}}
    start = time.perf_counter()
    exp = build_experiment(parse_config(raw))
    loaded = time.perf_counter() - start
    summary = exp.fit()
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "load_s": loaded, "wall_s": time.perf_counter() - start, "steps": summary["steps"],
                      "train_set": type(exp.train_data).__name__}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=8000)
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--streaming", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    runs = []
    with tempfile.TemporaryDirectory(prefix="distill-streaming-bench-") as tmp:
        folders = {n: make_folder(Path(tmp) / f"images{n}", n, args.size, seed=n) for n in (args.small, args.large)}
        for n, folder in folders.items():
            for streaming in (False, True):
                cmd = [sys.executable, __file__, "--child", "--folder", str(folder), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size),
                       "--out", str(Path(tmp) / f"run{n}{streaming}")] + (["--streaming"] if streaming else [])
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.append({"images": n, "mode": "streaming" if streaming else "in memory", **result})
                print(runs[-1], flush=True)
    peak = {(r["images"], r["mode"]): r["peak_rss_mb"] for r in runs}
    ratios = {mode: peak[(args.large, mode)] / peak[(args.small, mode)] for mode in ("in memory", "streaming")}
    write_json(args.out, {
        "benchmark": "benchmarks/streaming_memory.py",
        "setup": {"image_size": args.size, "classes": 10, "batch_size": args.batch_size, "steps": args.steps,
                  "student": "resnet8x4", "format": "imagefolder", "threads": 1,
                  "decoded_mb": {str(n): n * 3 * args.size ** 2 / 2**20 for n in folders}},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
        "peak_ratio_large_over_small": ratios,
        "peak_growth_mb": {mode: peak[(args.large, mode)] - peak[(args.small, mode)] for mode in ratios},
    })
    print(f"peak RSS ratio {args.large}/{args.small} images: " +
          ", ".join(f"{m} {v:.2f}x" for m, v in ratios.items()))


if __name__ == "__main__":
    main()
