"""Benchmark: CPU time of the vocabulary-sized LM losses, blocked with written-out gradients against autograd.

    python benchmarks/lm_loss_speed.py            # writes benchmarks/results/lm_loss_speed.{json,md}
    python benchmarks/lm_loss_speed.py --quick    # a smoke run (small vocabulary), written to a temp folder

One loss evaluation and its backward pass (to the student logits) on the 1M-token LLM recipe's batch: 16 x 128
positions (127 scored after the shift) over SmolLM2's 49,152-token vocabulary, float32, one thread. Arms, each as
the library computes it now and as autograd on the plain formula computed it before (kept as the reference in the
equality tests):

- ``ce``: next-token cross-entropy (``lm_ce``: :func:`distill.methods.llm.chunked.cross_entropy_kernel` block by
  block; before: ``F.cross_entropy``), what every other loss is compared with;
- ``fkl_top64``: forward KL from a stored top-64 teacher over the k + 1 buckets
  (:func:`distill.core.topk.student_bucket_logprobs`: blocked, gradient written out; before: autograd on
  logsumexp / scatter / gather);
- ``fkl_dense`` and ``rkl_dense``: forward / reverse KL from a dense teacher's logits (the divergences' analytic
  kernels block by block, :func:`distill.methods.llm.chunked.dense_kernel_rows`; before: autograd on
  ``log_softmax`` and the guarded KL, :meth:`TokenDivergence.token_divergence`);
- ``taid_top64``: TAID at t = 0.5 from the top-64 teacher (:func:`distill.methods.llm.taid.taid_rows`; before:
  :func:`taid_rows_reference`).

Each repeat times every arm once, interleaved (the machine is shared); the figure is the median over repeats of
the process CPU time, and the ratio is before / now within each repeat (median). The two results are also
compared (largest absolute difference of the loss and of the gradient).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

from distill.core.outputs import ModelOutput, StepInputs  # noqa: E402
from distill.core.topk import TopKLogits, student_bucket_logprobs  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.methods.llm.taid import taid_rows, taid_rows_reference  # noqa: E402
from distill.methods.logits.lm_ce import next_token_ce  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def plain_buckets(z: torch.Tensor, top: TopKLogits) -> torch.Tensor:
    """The student's k + 1 bucket log-probabilities by autograd on the formula (the computation before)."""
    log_z = torch.logsumexp(z, -1, keepdim=True)
    idx = top.indices.long()
    tail = torch.logsumexp(z.scatter(-1, idx, -math.inf), -1, keepdim=True)
    return torch.cat([z.gather(-1, idx), tail], -1) - log_z


def arms(b: int, t: int, v: int, k: int) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]]:
    gen = torch.Generator().manual_seed(0)
    zt = torch.randn(b, t, v, generator=gen) * 2
    labels = torch.randint(0, v, (b, t), generator=gen)
    top = TopKLogits.from_logits(zt, k)
    fkl, rkl = METHODS.get("fkl")(), METHODS.get("rkl")()
    p_buckets = top.bucket_logprobs()

    def bucket_kl(q: torch.Tensor) -> torch.Tensor:
        return (p_buckets.exp() * (p_buckets - q)).sum(-1).mean()

    def divergence(method: Any, fast: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(z: torch.Tensor) -> torch.Tensor:
            inputs = StepInputs(ModelOutput(z), ModelOutput(zt), None)
            d, _ = method.dense_kernel_divergence(inputs) if fast else method.token_divergence(inputs)
            return d.mean()
        return run

    return {
        "ce": (lambda z: next_token_ce(z, labels),
               lambda z: F.cross_entropy(z[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1))),
        "fkl_top64": (lambda z: bucket_kl(student_bucket_logprobs(z, top)), lambda z: bucket_kl(plain_buckets(z, top))),
        "fkl_dense": (divergence(fkl, True), divergence(fkl, False)),
        "rkl_dense": (divergence(rkl, True), divergence(rkl, False)),
        "taid_top64": (lambda z: taid_rows(z, top, 0.5).mean(), lambda z: taid_rows_reference(z, top, 0.5).mean()),
    }


def timed(fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    z = z0.clone().requires_grad_(True)
    start = time.process_time()
    loss = fn(z)
    loss.backward()
    return time.process_time() - start, loss.detach(), z.grad


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small vocabulary and 2 repeats, in a temp folder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    b, t, v, k = (2, 16, 2048, 16) if args.quick else (16, 128, 49152, 64)
    repeats = 2 if args.quick else args.repeats
    out = Path(tempfile.mkdtemp(prefix="lm_loss_speed_")) if args.quick else Path(args.out)
    z0 = torch.randn(b, t, v, generator=torch.Generator().manual_seed(1)) * 2
    table = arms(b, t, v, k)
    times: dict[str, list[list[float]]] = {name: [] for name in table}
    diffs: dict[str, dict[str, float]] = {}
    for name, fns in table.items():  # warm-up, and the equality of the two computations
        results = [timed(fn, z0) for fn in fns]
        if len(results) == 2:
            diffs[name] = {"loss": float((results[0][1] - results[1][1]).abs()),
                           "grad": float((results[0][2] - results[1][2]).abs().max())}
    for _ in range(repeats):
        for name, fns in table.items():
            times[name].append([timed(fn, z0)[0] for fn in fns])
    rows = []
    for name, reps in times.items():
        row: dict[str, Any] = {"arm": name, "now_s": statistics.median(r[0] for r in reps)}
        if len(reps[0]) == 2:
            row["before_s"] = statistics.median(r[1] for r in reps)
            row["speedup"] = statistics.median(r[1] / r[0] for r in reps)
            row |= {f"max_abs_diff_{key}": val for key, val in diffs[name].items()}
        rows.append(row)
    command = "python benchmarks/lm_loss_speed.py" + (" --quick" if args.quick else "")
    res = {"command": command, "shape": [b, t, v], "k": k, "repeats": repeats, "threads": 1,
           "torch": torch.__version__, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "lm_loss_speed.json", res)
    ce = rows[0]["now_s"]
    shape_note = "" if args.quick else " (the 1M-token recipe's batch)"
    lines = [f"# LM token losses: CPU time of one loss + backward, blocked vs autograd (`{command}`)", "",
             f"Student logits {b} x {t} x {v:,} float32{shape_note}, top-{k} teacher where "
             f"stored; 1 thread; median over {repeats} interleaved repeats of the process CPU time; torch "
             f"{torch.__version__}; shared machine.", "",
             "| loss | now (CPU s) | / ce | before: autograd on the formula (CPU s) | speed-up | max abs diff, loss | "
             "max abs diff, gradient |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        before = (f"{r['before_s']:.3f} | {r['speedup']:.2f}x | {r['max_abs_diff_loss']:.1e} | "
                  f"{r['max_abs_diff_grad']:.1e}") if "before_s" in r else "- | - | - | -"
        lines.append(f"| {r['arm']} | {r['now_s']:.3f} | {r['now_s'] / ce:.2f} | {before} |")
    (out / "lm_loss_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'lm_loss_speed.md'}")


if __name__ == "__main__":
    main()
