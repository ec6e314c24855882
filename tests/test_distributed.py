"""Several processes (DDP on CPU, gloo backend, loopback only) against one process with the same global batch.

Two worker processes (tests/ddp_worker.py) are started with the launcher's environment variables, as
``torchrun``/``accelerate launch`` would; the same runs are repeated in this process with one process. The
student has no BatchNorm (per-process BatchNorm statistics differ from the global batch's by design; see
docs/ddp.md), so the averaged gradients of two half-batches equal the gradient of the whole batch and the
trained weights must agree up to float32 reduction order: |w2 - w1| <= 1e-4 (the weights are O(0.1-1)).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
from safetensors.torch import load_file

from distill.train import distributed

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TOLERANCE = 1e-4
RUNS = ["kd", "kd_accum", "crd_bank"]
TWO_PROCESS_ONLY = ["stateful", "tgeo", "kd_resume"]
#: FSDP runs, in processes of their own (Accelerate's state is set to FSDP by hand there)
FSDP_RUNS = ["fsdp", "fsdp_resume"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(out: Path, runs: list[str], world: int = 2, timeout: float = 240.0):
    """Start ``world`` worker processes; returns a function that waits for them and fails on an error."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(TESTS)])}
        log = open(out / f"rank{rank}.log", "w")  # noqa: SIM115
        procs.append((subprocess.Popen([sys.executable, str(TESTS / "ddp_worker.py"), str(out), *runs], env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))

    def finish() -> None:
        try:
            for proc, _ in procs:
                proc.wait(timeout=timeout)
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        for rank, (proc, _) in enumerate(procs):
            if proc.returncode != 0:
                tail = (out / f"rank{rank}.log").read_text()[-3000:]
                pytest.fail(f"rank {rank} exited with {proc.returncode}:\n{tail}")

    return finish


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one = tmp_path_factory.mktemp("one_process")
    two = tmp_path_factory.mktemp("two_processes")
    launch(two, RUNS + TWO_PROCESS_ONLY)()  # two processes (one thread each), then the same runs in this one
    ddp_worker.main(one, RUNS)
    return one, two


def test_two_processes_train_the_same_weights_as_one(runs):
    one, two = runs
    for run in ("kd", "kd_accum"):
        ref = load_file(one / run / "rank0.safetensors")
        for rank in (0, 1):
            got = load_file(two / run / f"rank{rank}.safetensors")
            assert got.keys() == ref.keys()
            worst = max(float((got[k] - ref[k]).abs().max()) for k in ref)
            assert worst <= TOLERANCE, (run, rank, worst)
        # and training did move the weights (the comparison is not between two untouched initialisations)
        moved = max(float((ref[k] - v).abs().max()) for k, v in _initial_weights().items())
        assert moved > 100 * TOLERANCE
        summary = [json.loads((two / run / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert all(s["world"] == 2 for s in summary)
        assert summary[0]["final"] == summary[1]["final"]  # every rank evaluates the same model
        assert json.loads((one / run / "rank0.json").read_text())["world"] == 1


def _initial_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"student.{k}": v for k, v in ddp_worker.PlainCNN(8).state_dict().items()}


def test_crd_memory_bank_update_of_sharded_batch_equals_whole_batch(runs):
    one, two = runs
    ref = load_file(one / "crd_bank" / "rank0.safetensors")
    for rank in (0, 1):
        got = load_file(two / "crd_bank" / f"rank{rank}.safetensors")
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-6), (rank, k)
    changed = (ref["memory_s"] - ref["memory_s_before"]).abs().amax(1) > 1e-3
    assert changed.tolist() == [True] * 4 + [False] * 2  # the batch's rows 0-3 moved, rows 4 and 5 did not


def test_stateful_methods_stay_identical_across_ranks(runs):
    """CRD's memory bank and FT's init stage (whose loss leaves the student without gradient: DDP needs
    find_unused_parameters), TGeo's look-ahead inside the DDP forward and its ω in buffers."""
    _, two = runs
    for run in ("stateful", "tgeo"):
        states = [load_file(two / run / f"rank{r}.safetensors") for r in (0, 1)]
        for k in states[0]:
            assert torch.equal(states[0][k], states[1][k]), (run, k)
        reports = [json.loads((two / run / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert all(r["spread"] == 0.0 and r["world"] == 2 for r in reports)
        assert reports[0]["steps"] == (15 if run == "stateful" else 10)  # FT's init epoch, then 2 epochs


def test_two_process_run_resumes_exactly(runs):
    """Stopped after step 3 and resumed from rank 0's step-2 checkpoint by both ranks: the same weights as the
    uninterrupted two-process run, bit for bit."""
    _, two = runs
    for rank in (0, 1):
        full = load_file(two / "kd" / f"rank{rank}.safetensors")
        resumed = load_file(two / "kd_resume" / f"rank{rank}.safetensors")
        for k in full:
            assert torch.equal(full[k], resumed[k]), (rank, k)
    assert json.loads((two / "kd_resume" / "rank0.json").read_text())["steps"] == 10


def test_only_rank_zero_writes_the_run_folder(runs):
    _, two = runs
    rows = (two / "kd" / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,split,metric,value"
    assert len([r for r in rows if r.startswith("1,0,train,loss,")]) == 1  # one writer, not two
    assert (two / "kd" / "run" / "student.safetensors").exists()


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    two = tmp_path_factory.mktemp("fsdp_two_processes")
    launch(two, FSDP_RUNS)()
    return two


def test_fsdp_shards_and_trains_the_same_weights_as_one_process(runs, fsdp_runs):
    """FSDP (version 2, Accelerate's plugin; see ddp_worker.CpuFSDPTrainer): each rank holds half of every
    parameter, the student's and the methods' (FitNet's projector), yet trains what one process does, and the
    files hold whole tensors gathered on rank 0."""
    one, two = runs[0], fsdp_runs
    ref = load_file(one / "kd" / "rank0.safetensors")
    for rank in (0, 1):
        got = load_file(two / "fsdp" / f"rank{rank}.safetensors")
        assert got.keys() == ref.keys()
        worst = max(float((got[k] - ref[k]).abs().max()) for k in ref)
        assert worst <= TOLERANCE, (rank, worst)
        shards = json.loads((two / "fsdp" / f"rank{rank}_shards.json").read_text())
        assert shards["student.stage2.0.weight"] == [8, 8, 3, 3]  # 16 output channels, half on each rank
        assert shards["methods.methods.fitnet.regressor.weight"][0] * 2 == ref[
            "methods.methods.fitnet.regressor.weight"].shape[0]
    run = two / "fsdp" / "run"
    student = load_file(run / "student.safetensors")
    assert {k: tuple(v.shape) for k, v in student.items()} == {
        k.removeprefix("student."): tuple(v.shape) for k, v in ref.items() if k.startswith("student.")}
    assert all(torch.equal(v, load_file(two / "fsdp" / "rank0.safetensors")[f"student.{k}"])
               for k, v in student.items())
    methods = load_file(run / "methods.safetensors")
    assert tuple(methods["methods.fitnet.regressor.weight"].shape) == tuple(
        ref["methods.methods.fitnet.regressor.weight"].shape)
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    momenta = [s["momentum_buffer"] for s in optimizer["state"].values()]
    assert sorted(tuple(m.shape) for m in momenta) == sorted(
        tuple(v.shape) for k, v in ref.items() if not k.endswith("num_batches_tracked"))
    summary = [json.loads((two / "fsdp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world"] == 2 and s["spread"] == 0.0 for s in summary)
    assert summary[0]["final"] == summary[1]["final"]


def test_fsdp_run_resumes_from_its_gathered_checkpoint(fsdp_runs):
    """Stopped after step 3, resumed by new processes from rank 0's whole-tensor step-2 checkpoint (re-sharded
    on load, optimiser state included): the weights of the uninterrupted FSDP run."""
    for rank in (0, 1):
        full = load_file(fsdp_runs / "fsdp" / f"rank{rank}.safetensors")
        resumed = load_file(fsdp_runs / "fsdp_resume" / f"rank{rank}.safetensors")
        for k in full:
            assert torch.allclose(full[k], resumed[k], atol=1e-7, rtol=0), (rank, k)
    assert json.loads((fsdp_runs / "fsdp_resume" / "rank0.json").read_text())["steps"] == 10


def test_fsdp_refusals(monkeypatch):
    """On CPUs Accelerate would run ``--use_fsdp`` as plain data parallelism: refused. A size-based wrap policy
    that would shard a module container (the methods' ModuleDict) is refused naming it."""
    from types import SimpleNamespace

    from distill.train.sharding import check_wrap_policy
    from distill.train.trainer import refuse_sharding

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"^FSDP \(accelerate launch --use_fsdp, ACCELERATE_USE_FSDP\) shards "
                                         r"over GPUs only"):
        refuse_sharding(cpu=True)
    refuse_sharding(cpu=False)
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    model = torch.nn.Module()
    model.methods = torch.nn.ModuleDict({"proj": torch.nn.Linear(8, 8)})
    model.head = torch.nn.Linear(8, 2)
    small = SimpleNamespace(auto_wrap_policy=size_based_auto_wrap_policy, min_num_params=10)
    with pytest.raises(ValueError, match=r"size-based wrap policy \(min_num_params 10\) would shard the module "
                                         r"container 'methods'"):
        check_wrap_policy(model, small)
    check_wrap_policy(model, SimpleNamespace(auto_wrap_policy=size_based_auto_wrap_policy, min_num_params=1000))
    check_wrap_policy(model, SimpleNamespace(auto_wrap_policy=None, min_num_params=0))


def test_helpers_are_no_ops_in_one_process():
    x = torch.arange(6.0).reshape(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert torch.equal(distributed.all_gather_cat(x), x)
    assert torch.equal(distributed.all_reduce_mean(x.clone()), x)
    entered = []
    with distributed.main_process_first():
        entered.append(True)
    distributed.barrier()
    assert entered == [True] and distributed.max_abs_difference_across_ranks([x]) == 0.0
