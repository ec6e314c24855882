"""Two processes against one: the weights DDP trains (CPU, gloo, loopback) next to those of one process with the same
global batch, as ``tests/test_distributed.py`` checks them, with the differences written down.

The runs are those of the test (``tests/ddp_worker.py``: a BatchNorm-free CNN on the shipped demo images, 10 SGD
steps of CE + KD + FitNet, global batch 8): ``kd`` (2 x 4 against 1 x 8), ``kd_accum`` (the same with
``grad_accum: 2``, so DDP's ``no_sync`` is exercised) and ``fsdp`` (the ``kd`` run with the student and FitNet's
projector sharded by FSDP version 2, in worker processes of its own, against the one-process ``kd`` run). Each
process runs one thread; a minute or two in all.

    python benchmarks/ddp_parity.py          # benchmarks/results/ddp_parity.{json,md}
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
RUNS = ["kd", "kd_accum"]
#: run in processes of their own (the worker sets Accelerate's state to FSDP by hand); compared with "kd"
FSDP_RUNS = ["fsdp"]
#: the bound tests/test_distributed.py asserts
TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_workers(out: Path, world: int, runs: list[str], timeout: float = 600.0) -> None:
    """``world`` worker processes with the launcher's variables (one process: none, as a plain run)."""
    port = free_port()
    base = {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    procs = []
    for rank in range(world):
        env = dict(base)
        if world > 1:
            env |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                    "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(out / f"world{world}-{runs[0]}-rank{rank}.log", "w")  # noqa: SIM115
        procs.append((subprocess.Popen([sys.executable, str(WORKER), str(out), *runs], env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    for rank, (proc, log) in enumerate(procs):
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        if proc.returncode != 0:
            tail = (out / f"world{world}-{runs[0]}-rank{rank}.log").read_text()[-2000:]
            raise SystemExit(f"world {world} rank {rank} exited with {proc.returncode}:\n{tail}")


def compare(one: Path, two: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for run in RUNS + FSDP_RUNS:
        ref = load_file(one / ("kd" if run in FSDP_RUNS else run) / "rank0.safetensors")
        worst = {}
        for rank in (0, 1):
            got = load_file(two / run / f"rank{rank}.safetensors")
            worst[f"rank{rank}"] = max(float((got[k] - ref[k]).abs().max()) for k in ref)
        rows[run] = {"max_abs_diff": worst, "largest_abs_weight": max(float(v.abs().max()) for v in ref.values()),
                     "tensors": len(ref)}
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["# DDP parity: 2 processes against 1, same global batch", "",
             "Command: `python benchmarks/ddp_parity.py` (the runs of `tests/test_distributed.py`: "
             "`tests/ddp_worker.py`, CPU, gloo on loopback, one thread per process; global batch 8, 10 SGD steps "
             f"of CE + KD + FitNet; `fsdp`: the `kd` run sharded by FSDP version 2, against the one-process `kd`; "
             f"the test's tolerance is {TOLERANCE:g}).", "",
             "| run | largest weight difference, rank 0 | rank 1 | largest weight |", "|---|---|---|---|"]
    for run, row in result["runs"].items():
        d = row["max_abs_diff"]
        lines.append(f"| {run} | {d['rank0']:.1e} | {d['rank1']:.1e} | {row['largest_abs_weight']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddp_parity_") as tmp:
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        one.mkdir()
        two.mkdir()
        run_workers(two, 2, RUNS)
        run_workers(two, 2, FSDP_RUNS)
        run_workers(one, 1, RUNS)
        runs = compare(one, two)
    import torch

    result = {"command": "python benchmarks/ddp_parity.py", "torch": torch.__version__, "tolerance": TOLERANCE,
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ddp_parity.json", result)
    (args.out / "ddp_parity.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
