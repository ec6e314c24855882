"""Check: does ``torch.compile`` of a student work with feature taps (forward hooks added per step)?

    python benchmarks/compile_check.py          # writes benchmarks/results/compile_check.json

A tiny CNN student with FitNet on its ``stage2`` output (a hook added and removed around every forward) is
compiled with ``nn.Module.compile()``; the script records the first (compiling) step's time, the next steps'
times, the loss against the eager loss, and dynamo's counters (graphs, graph breaks: recompiling every step
because of the hooks would show as many unique graphs).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TinyCNN, demo_subset  # noqa: E402
from portable import write_json  # noqa: E402

from distill.core.compose import Composite  # noqa: E402
from distill.core.teachers import FrozenTeacher  # noqa: E402
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.tasks.classification import ImageClassification  # noqa: E402
from distill.train.module import DistillModule  # noqa: E402


def main() -> int:
    import torch._dynamo.utils as dynamo_utils

    torch.set_num_threads(1)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    torch.manual_seed(0)
    methods = Composite({"ce": METHODS.get("ce")(), "fitnet": METHODS.get("fitnet")(student="f2", teacher="f2")})
    module = DistillModule(TinyCNN(8), methods, FrozenTeacher(TinyCNN(16)), task)
    data = demo_subset("train", 2)
    batch = task.prepare(task.fetch(data, torch.arange(16)), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    eager = float(module(batch)[0].detach())
    module.student.compile()
    steps = []
    for _ in range(4):
        t0 = time.perf_counter()
        loss, _, _ = module(batch)
        loss.backward()
        steps.append({"seconds": time.perf_counter() - t0, "loss": float(loss.detach())})
    result = {
        "command": "python benchmarks/compile_check.py",
        "torch": torch.__version__,
        "eager_loss": eager,
        "steps": steps,
        "max_loss_difference": max(abs(s["loss"] - eager) for s in steps),
        "dynamo_stats": dict(dynamo_utils.counters["stats"]),
        "graph_breaks": dict(dynamo_utils.counters["graph_break"]),
    }
    out = REPO / "benchmarks" / "results" / "compile_check.json"
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
